"""Repository names, and turning the policy's decision into OCI answers."""

from __future__ import annotations

import json
import re

from fastapi import Request
from sqlalchemy.orm import Session

from modelhall.adapters.storage.base import BlobStore
from modelhall.registry.auth.policy import Action, Outcome, decide
from modelhall.registry.auth.principal import Principal
from modelhall.registry.auth.tokens import SERVICE
from modelhall.registry.db.models import Repository
from modelhall.registry.metadata import create_repository
from modelhall.registry.oci.errors import OCIError

COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_PATTERN = re.compile(rf"^{COMPONENT}(?:/{COMPONENT})+$")
MAX_NAME_LENGTH = 255
# The same words whether the repository does not exist or may not be seen; the name asked for is not echoed.
NOT_FOUND_DETAIL = "no repository by that name, or none you may see"
CHALLENGE_ACTIONS = {Action.VIEW: "pull", Action.PULL: "pull", Action.PUSH: "pull,push", Action.DELETE: "delete"}


def validate_name(name: str) -> None:
    if len(name) > MAX_NAME_LENGTH or not NAME_PATTERN.match(name):
        raise OCIError("NAME_INVALID", f"repository names look like owner/name in lower case, not {name[:80]!r}")


def challenge(request: Request, scope: str | None = None, error: str | None = None) -> dict[str, str]:
    """The ``WWW-Authenticate`` header that starts the Docker token flow."""
    realm = str(request.base_url).rstrip("/") + "/token"
    value = f'Bearer realm="{realm}",service="{SERVICE}"'
    if scope:
        value += f',scope="{scope}"'
    if error:
        value += f',error="{error}"'
    return {"WWW-Authenticate": value}


def require(request: Request, db: Session, principal: Principal, name: str, action: Action) -> Repository:
    """The repository ``name`` if ``principal`` may do ``action`` to it, else the OCI error.

    A push to a repository that does not exist yet creates it, private.
    """
    validate_name(name)
    outcome, repository = decide(db, principal, name, action)
    if outcome is Outcome.CHALLENGE:
        scope = f"repository:{name}:{CHALLENGE_ACTIONS[action]}"
        error = "insufficient_scope" if principal.presented_credentials else None
        raise OCIError("UNAUTHORIZED", headers=challenge(request, scope, error))
    if outcome is Outcome.NOT_FOUND:
        raise OCIError("NAME_UNKNOWN", NOT_FOUND_DETAIL)
    if outcome is Outcome.DENIED:
        if action is Action.PULL:
            raise OCIError("DENIED", f"the weights of {name} are hidden: only its members may pull it; "
                                     "its demo and predict API are open to you")
        raise OCIError("DENIED", f"you may not {action.value} {name}")
    if repository is not None:
        return repository
    if action is Action.PUSH:
        repository = create_repository(db, name)
        db.commit()  # at once: the upload that follows may stream for minutes and must hold no lock
        return repository
    raise OCIError("NAME_UNKNOWN", NOT_FOUND_DETAIL)


def outside_pinned_version(principal: Principal, store: BlobStore, digest: str, *, manifest: bool) -> bool:
    """Whether a model pod's version pull token (``principal.version_pull``) does not reach ``digest``: it
    reaches its own manifests and the blobs they name, nothing else in the repository."""
    if principal.version_pull is None:
        return False
    pinned = principal.version_pull[1]
    if manifest:
        return digest not in pinned
    for manifest_digest in pinned:
        try:
            body = json.loads(b"".join(store.read(manifest_digest)))
        except (FileNotFoundError, ValueError):
            continue
        named = [body.get("config") or {}, *(body.get("layers") or [])]
        if any(descriptor.get("digest") == digest for descriptor in named):
            return False
    return True
