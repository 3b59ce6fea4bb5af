"""``GET /token``: the Docker registry token flow.

OCI clients that got a ``WWW-Authenticate: Bearer realm=…/token`` challenge come here,
with HTTP Basic (user name + access token) or anonymously, and ask for scopes such as
``repository:alice/snow-gan:pull,push``. They get a short-lived signed token for the
repositories they named.

The token grants every action the credential holds on those repositories, not only the
ones asked for: some clients (oras-py) fetch one token on their first request, a pull,
and reuse it for the pushes that follow. That grants nothing the credential could not
ask for itself, and the token expires within minutes.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from modelhall.registry.auth.policy import OCI_ACTIONS, permitted_actions
from modelhall.registry.auth.principal import Principal
from modelhall.registry.auth.tokens import issue_registry_token
from modelhall.registry.context import RegistryContext, get_context, get_db, get_principal
from modelhall.registry.db.models import Repository

router = APIRouter()


def requested_repositories(request: Request) -> list[str]:
    """Repositories named by ``repository:<name>:<actions>`` in every ``scope`` parameter.

    A parameter may hold several scopes separated by spaces.
    """
    names = []
    for parameter in request.query_params.getlist("scope"):
        for scope in parameter.split():
            kind, _, rest = scope.partition(":")
            name, _, _actions = rest.rpartition(":")
            if kind == "repository" and name and name not in names:
                names.append(name)
    return names


@router.get("/token")
def get_registry_token(request: Request, db: Session = Depends(get_db), principal: Principal = Depends(get_principal),
                       context: RegistryContext = Depends(get_context)) -> JSONResponse:
    access: dict[str, frozenset[str]] = {}
    for name in requested_repositories(request):
        repository = db.scalar(select(Repository).where(Repository.name == name))
        access[name] = frozenset(action.value for action in permitted_actions(db, principal, name, repository)
                                 if action in OCI_ACTIONS)
    ttl = context.settings.token_ttl_seconds
    token, issued = issue_registry_token(context.settings.signing_key, principal.name, principal.scopes, access, ttl)
    issued_at = datetime.fromtimestamp(issued, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return JSONResponse({"token": token, "access_token": token, "expires_in": ttl, "issued_at": issued_at})
