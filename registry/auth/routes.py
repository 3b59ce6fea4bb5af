"""``GET /token``: the Docker registry token flow.

OCI clients that got a ``WWW-Authenticate: Bearer realm=…/token`` challenge come here,
with HTTP Basic (user name + access token) or anonymously, and ask for scopes such as
``repository:alice/snow-gan:pull,push``. They get a short-lived signed token granting
the requested actions the policy allows, and nothing more.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from modelhall.registry.auth.policy import Action, permitted_actions
from modelhall.registry.auth.principal import Principal
from modelhall.registry.auth.tokens import issue_registry_token
from modelhall.registry.context import RegistryContext, get_context, get_db, get_principal
from modelhall.registry.db.models import Repository

router = APIRouter()


def requested_scopes(request: Request) -> dict[str, set[str]]:
    """``repository:<name>:<actions>`` entries from every ``scope`` parameter (several may be space-separated)."""
    wanted: dict[str, set[str]] = {}
    for parameter in request.query_params.getlist("scope"):
        for scope in parameter.split():
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind == "repository" and name:
                expanded = {a.value for a in Action} if actions == "*" else set(actions.split(","))
                wanted.setdefault(name, set()).update(expanded)
    return wanted


@router.get("/token")
def get_registry_token(request: Request, db: Session = Depends(get_db), principal: Principal = Depends(get_principal),
                       context: RegistryContext = Depends(get_context)) -> JSONResponse:
    access: dict[str, frozenset[str]] = {}
    for name, actions in requested_scopes(request).items():
        repository = db.scalar(select(Repository).where(Repository.name == name))
        allowed = {action.value for action in permitted_actions(db, principal, name, repository)}
        access[name] = frozenset(actions & allowed)
    ttl = context.settings.token_ttl_seconds
    token, issued = issue_registry_token(context.settings.signing_key, principal.name, principal.scopes, access, ttl)
    issued_at = datetime.fromtimestamp(issued, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return JSONResponse({"token": token, "access_token": token, "expires_in": ttl, "issued_at": issued_at})
