"""``GET /v2/<name>/tags/list`` with ``n`` and ``last`` pagination, and the catalog."""

from __future__ import annotations

from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from modelhall.registry.auth.policy import Action, visible_clause
from modelhall.registry.auth.principal import Principal
from modelhall.registry.context import get_db, get_principal
from modelhall.registry.db.models import Repository
from modelhall.registry.metadata import tags_of
from modelhall.registry.oci.access import require
from modelhall.registry.oci.errors import OCIError

router = APIRouter()
MAX_PAGE = 1000


def _page_size(n: int | None) -> int:
    if n is not None and n < 0:
        raise OCIError("UNSUPPORTED", "n must not be negative", status=400)
    return MAX_PAGE if n is None else min(n, MAX_PAGE)


def _next_link(path: str, n: int, last: str) -> dict[str, str]:
    return {"Link": f'<{path}?{urlencode({"n": n, "last": last})}>; rel="next"'}


@router.get("/v2/{name:path}/tags/list")
def list_tags(name: str, request: Request, n: int | None = Query(default=None), last: str | None = None,
              db: Session = Depends(get_db), principal: Principal = Depends(get_principal)) -> JSONResponse:
    repository = require(request, db, principal, name, Action.VIEW)
    size = _page_size(n)
    tags = tags_of(db, repository, after=last, limit=size + 1) if size else []
    headers = _next_link(f"/v2/{name}/tags/list", size, tags[size - 1]) if len(tags) > size else {}
    return JSONResponse({"name": name, "tags": tags[:size]}, headers=headers)


@router.get("/v2/_catalog")
def list_repositories(n: int | None = Query(default=None), last: str | None = None,
                      db: Session = Depends(get_db), principal: Principal = Depends(get_principal)) -> JSONResponse:
    """The repositories the caller may see, in name order."""
    size = _page_size(n)
    query = select(Repository.name).where(visible_clause(principal)).order_by(Repository.name)
    if last:
        query = query.where(Repository.name > last)
    names = list(db.scalars(query.limit(size + 1)))
    headers = _next_link("/v2/_catalog", size, names[size - 1]) if len(names) > size else {}
    return JSONResponse({"repositories": names[:size]}, headers=headers)
