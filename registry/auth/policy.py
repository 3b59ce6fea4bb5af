"""The one function that decides who may do what to which repository.

Every route (OCI, REST API, token endpoint) asks :func:`decide`. Private repositories
stay invisible: whoever may not read one gets the same answer as for a repository that
does not exist.
"""

from __future__ import annotations

import enum

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelhall.registry.auth.principal import Principal
from modelhall.registry.db.models import Membership, Organization, Repository


class Action(enum.StrEnum):
    PULL = "pull"
    PUSH = "push"
    DELETE = "delete"


class Outcome(enum.Enum):
    ALLOW = "allow"
    CHALLENGE = "challenge"   # 401: say who you are (or get a token with this scope)
    NOT_FOUND = "not_found"   # 404: nothing here that you may see
    DENIED = "denied"         # 403: you may see it, but not do this


TOKEN_SCOPE_FOR = {Action.PULL: "read", Action.PUSH: "write", Action.DELETE: "write"}


def namespace_of(repository_name: str) -> str:
    return repository_name.split("/", 1)[0]


def may_write_namespace(db: Session, principal: Principal, namespace: str) -> bool:
    """Users write their own namespace and those of organisations they belong to."""
    user = principal.user
    if user is None:
        return False
    if user.is_admin or user.name == namespace:
        return True
    membership = db.scalar(
        select(Membership).join(Organization).where(Organization.name == namespace, Membership.user_id == user.id)
    )
    return membership is not None


def permitted_actions(db: Session, principal: Principal, name: str, repository: Repository | None,
                      *, honour_grants: bool = True) -> frozenset[Action]:
    """Everything ``principal`` may do to repository ``name`` (``repository`` if it exists)."""
    actions: set[Action] = set()
    if may_write_namespace(db, principal, namespace_of(name)):
        actions = {action for action in Action if TOKEN_SCOPE_FOR[action] in principal.scopes}
    if repository is not None and repository.is_public:
        actions.add(Action.PULL)
    if honour_grants and principal.grants is not None:
        actions &= {Action(a) for a in principal.grants.get(name, frozenset()) if a in Action.__members__.values()}
    return frozenset(actions)


def decide(db: Session, principal: Principal, name: str, action: Action) -> tuple[Outcome, Repository | None]:
    repository = db.scalar(select(Repository).where(Repository.name == name))
    granted = permitted_actions(db, principal, name, repository)
    if action in granted:
        return Outcome.ALLOW, repository
    possible = permitted_actions(db, principal, name, repository, honour_grants=False)
    if principal.is_anonymous and not principal.presented_credentials:
        return Outcome.CHALLENGE, None
    if action in possible:
        return Outcome.CHALLENGE, None  # the registry token in use was minted without this action
    if Action.PULL in possible and repository is not None:
        return Outcome.DENIED, None
    return (Outcome.DENIED if action == Action.PUSH else Outcome.NOT_FOUND), None
