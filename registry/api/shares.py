"""Share links, from both ends.

Authors (maintainers, with a ``write`` token or a session)::

    POST   /api/v1/repos/{owner}/{name}/shares        create: the URL is shown once
    GET    /api/v1/repos/{owner}/{name}/shares        list, with runs made and state
    DELETE /api/v1/repos/{owner}/{name}/shares/{id}   revoke

Whoever holds a link (``X-Modelhall-Share: mhs_…``, or the browser session that opened it)::

    GET  /s/{token}                  open it: remembered in the session, on to the demo
    GET  /api/v1/shared              what the link shows (no owner, if it is anonymous)
    POST /api/v1/shared/predict      run the link's version
    GET  /api/v1/shared/runs         the runs made through the link
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from modelhall.registry.api.repos import visible_repository
from modelhall.registry.api.runs import run_json
from modelhall.registry.api.schemas import MAX_ID
from modelhall.registry.auth.policy import Action
from modelhall.registry.auth.principal import Principal
from modelhall.registry.auth.sharing import ShareLinkError, create_share_link, find_share_link, link_state
from modelhall.registry.context import get_db, get_principal
from modelhall.registry.db.models import Repository, Run, ShareLink
from modelhall.registry.deployments import Deployments
from modelhall.registry.gateway import get_deployments, newest_version, resolve_version, serve_version
from modelhall.registry.metadata import find_manifest, find_version
from modelhall.registry.runs import new_run_id

router = APIRouter(tags=["sharing"])
# What an anonymous link's holder may see of a version's annotations: nothing that names a person or a place.
ANONYMOUS_ANNOTATIONS = ("org.opencontainers.image.title", "org.opencontainers.image.version",
                         "org.opencontainers.image.description", "org.opencontainers.image.created")


class ShareCreate(BaseModel):
    label: str = Field(default="", max_length=128, description="a note to recognise the link by, e.g. 'NeurIPS R2'")
    expires_in_days: float | None = Field(default=30, gt=0, le=3650, description="null: never")
    anonymous: bool = Field(default=False, description="hide the owner from whoever holds the link")
    pin: str | None = Field(default=None, max_length=135, description="a tag or digest: the link runs that version only")
    run_quota: int | None = Field(default=None, ge=1, description="runs allowed through the link; null: no limit")


class ShareOut(BaseModel):
    id: int
    label: str
    digest: str | None
    anonymous: bool
    expires_at: datetime | None
    run_quota: int | None
    runs_used: int
    state: str
    created_at: datetime
    url: str | None = Field(default=None, description="only in the answer that created it")


def share_out(link: ShareLink, url: str | None = None) -> ShareOut:
    return ShareOut(id=link.id, label=link.label, digest=link.digest, anonymous=link.anonymous,
                    expires_at=link.expires_at, run_quota=link.run_quota, runs_used=link.runs_used,
                    state=link_state(link), created_at=link.created_at, url=url)


@router.post("/api/v1/repos/{owner}/{name}/shares", response_model=ShareOut, status_code=201)
def create_share(owner: str, name: str, body: ShareCreate, request: Request, db: Session = Depends(get_db),
                 principal: Principal = Depends(get_principal)) -> ShareOut:
    """A new share link: demo and runs only, never pull. Its URL is in this answer and nowhere else."""
    repository = visible_repository(db, principal, f"{owner}/{name}", Action.MANAGE)
    digest = None
    if body.pin:
        pinned = find_version(db, repository, body.pin)
        if pinned is None:
            raise HTTPException(404, f"{owner}/{name} has no version {body.pin}")
        digest = pinned.digest
    expires_at = datetime.now(UTC) + timedelta(days=body.expires_in_days) if body.expires_in_days else None
    link, token = create_share_link(db, repository, principal.user, label=body.label, digest=digest,
                                    anonymous=body.anonymous, expires_at=expires_at, run_quota=body.run_quota)
    db.commit()
    return share_out(link, url=str(request.base_url).rstrip("/") + f"/s/{token}")


@router.get("/api/v1/repos/{owner}/{name}/shares", response_model=list[ShareOut])
def list_shares(owner: str, name: str, db: Session = Depends(get_db),
                principal: Principal = Depends(get_principal)) -> list[ShareOut]:
    repository = visible_repository(db, principal, f"{owner}/{name}", Action.MANAGE)
    links = db.scalars(select(ShareLink).where(ShareLink.repository_id == repository.id).order_by(ShareLink.id))
    return [share_out(link) for link in links]


@router.delete("/api/v1/repos/{owner}/{name}/shares/{link_id}", response_model=ShareOut)
def revoke_share(owner: str, name: str, link_id: Annotated[int, PathParam(ge=1, le=MAX_ID)],
                 db: Session = Depends(get_db),
                 principal: Principal = Depends(get_principal)) -> ShareOut:
    """Revoke a link at once; its runs stay in the history."""
    repository = visible_repository(db, principal, f"{owner}/{name}", Action.MANAGE)
    link = db.get(ShareLink, link_id)
    if link is None or link.repository_id != repository.id:
        raise HTTPException(404, f"{owner}/{name} has no share link {link_id}")
    link.revoked_at = link.revoked_at or datetime.now(UTC)
    db.commit()
    return share_out(link)


def _link_version_digest(db: Session, link: ShareLink, repository: Repository) -> str:
    """The version a link opens: the one it is pinned to, or the repository's newest (``latest``, or
    else the newest tag, as the gateway picks it)."""
    if link.digest:
        return link.digest
    newest = newest_version(db, repository)
    if newest is None:
        raise HTTPException(404, "the shared model has no version yet")
    return newest.digest


@router.get("/s/{token}", include_in_schema=False)
def open_share(token: str, request: Request, to: str | None = None, db: Session = Depends(get_db)) -> Response:
    """A share link opened in a browser: remember it in the session and go to the model's page in
    the gallery (if one runs) or to its demo (``?to=demo``, or no gallery)."""
    try:
        link = find_share_link(db, token)
    except ShareLinkError as error:
        return JSONResponse({"detail": str(error)}, status_code=error.status)
    repository = db.get(Repository, link.repository_id)
    assert repository is not None
    request.session["share"] = token
    gallery = request.app.state.context.settings.gallery_url
    if gallery and to != "demo":
        return RedirectResponse(f"{gallery.rstrip('/')}/?share={token}", status_code=303)
    return RedirectResponse(f"/live/{repository.id}@{_link_version_digest(db, link, repository)}/", status_code=303)


def _shared(db: Session, principal: Principal) -> tuple[ShareLink, Repository]:
    if principal.share is None:
        raise HTTPException(404, "no share link: send it as X-Modelhall-Share, or open it in the browser first")
    link = db.get(ShareLink, principal.share.link_id)
    repository = db.get(Repository, principal.share.repository_id)
    assert link is not None and repository is not None
    return link, repository


@router.get("/api/v1/shared")
def shared_model(db: Session = Depends(get_db), principal: Principal = Depends(get_principal)) -> dict[str, Any]:
    """The model a share link opens, as its holder may see it."""
    link, repository = _shared(db, principal)
    digest = _link_version_digest(db, link, repository)
    manifest = find_manifest(db, repository, digest)
    assert manifest is not None
    spec = manifest.spec or {}
    annotations = manifest.annotations or {}
    if link.anonymous:
        annotations = {key: value for key, value in annotations.items() if key in ANONYMOUS_ANNOTATIONS}
        spec = {key: value for key, value in spec.items() if key not in ("authors", "source", "license_url")}
    return {
        "repository": None if link.anonymous else repository.name,
        "owner": None if link.anonymous else repository.namespace,
        "anonymous": link.anonymous, "digest": digest, "pinned": link.digest is not None,
        "spec": spec, "readme": manifest.readme, "annotations": annotations,
        "demo": f"/live/{repository.id}@{digest}/", "expires_at": link.expires_at.isoformat() if link.expires_at else None,
        "runs_left": None if link.run_quota is None else max(link.run_quota - link.runs_used, 0),
    }


@router.post("/api/v1/shared/predict")
async def shared_predict(request: Request, db: Session = Depends(get_db),
                         principal: Principal = Depends(get_principal)) -> Response:
    """One prediction on the link's version, like ``…/repos/{owner}/{name}/predict``."""
    link, repository = _shared(db, principal)
    try:
        version = resolve_version(db, principal, repository.name, _link_version_digest(db, link, repository))
    except LookupError as error:
        raise HTTPException(404, str(error)) from None
    return await serve_version(request, version, "predict", db, principal, run_id=new_run_id())


@router.get("/api/v1/shared/runs")
def shared_runs(db: Session = Depends(get_db), principal: Principal = Depends(get_principal),
                deployments: Deployments = Depends(get_deployments)) -> list[dict[str, Any]]:
    """The runs made through this link, newest first."""
    link, repository = _shared(db, principal)
    deployments.collect_runs(repository.id)
    runs = db.scalars(select(Run).where(Run.repository_id == repository.id, Run.caller == f"share-link:{link.id}")
                      .order_by(Run.created_at.desc()).limit(200))
    return [run_json(run, show_caller=False) for run in runs]
