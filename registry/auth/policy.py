"""The one function that decides who may do what to which repository.

Every surface asks :func:`decide` (or, for listings, :func:`visible_clause`, the same
rules as a query): the OCI API, the token endpoint, the REST API, the gateway to demos
and predictions, run history and run files.

Rights come from three places, and a principal gets their union:

- **the repository's audience**: a ``public`` one may be seen and run by anyone, an
  ``internal`` one by anyone logged in; both may be pulled by them too unless its
  weights are ``hidden``;
- **a role**: owner of the namespace (the user, or an organisation's ``owner``),
  ``maintainer`` (push, delete, settings, share links) or ``reader`` (see, pull, run,
  run history) through organisation membership or as a collaborator; an access token
  narrows a role to its scopes;
- **a share link** for the repository: see it and run it (only the pinned version, if
  the link is pinned), never pull.

Whoever may not see a repository gets the same answer as for one that does not exist.
"""

from __future__ import annotations

import enum

from sqlalchemy import ColumnElement, bindparam, false, or_, select, true
from sqlalchemy.orm import Session

from modelhall.registry.auth.principal import Principal
from modelhall.registry.db.models import ROLES, Collaborator, Membership, Organization, Repository


class Action(enum.StrEnum):
    VIEW = "view"            # metadata, versions, model card, listings
    PULL = "pull"            # the artifact itself (OCI manifests and blobs)
    RUN = "run"              # the demo, predict, async runs
    READ_RUNS = "read_runs"  # run history, run files, worker and build logs
    PUSH = "push"
    DELETE = "delete"
    MANAGE = "manage"        # visibility, weights, description, share links


class Outcome(enum.Enum):
    ALLOW = "allow"
    CHALLENGE = "challenge"   # 401: say who you are (or get a token with this scope)
    NOT_FOUND = "not_found"   # 404: nothing here that you may see
    DENIED = "denied"         # 403: you may see it, but not do this


SCOPE_FOR = {Action.VIEW: "read", Action.PULL: "read", Action.RUN: "read", Action.READ_RUNS: "deploy",
             Action.PUSH: "write", Action.DELETE: "write", Action.MANAGE: "write"}
RIGHTS_OF_ROLE = {
    "reader": frozenset({Action.VIEW, Action.PULL, Action.RUN, Action.READ_RUNS}),
    "maintainer": frozenset(Action),
    "owner": frozenset(Action),
}
AUDIENCE_RIGHTS = frozenset({Action.VIEW, Action.RUN})
SHARE_RIGHTS = frozenset({Action.VIEW, Action.RUN, Action.READ_RUNS})  # its own runs only: see api/runs.py
OCI_ACTIONS = frozenset({Action.PULL, Action.PUSH, Action.DELETE})


def namespace_of(repository_name: str) -> str:
    return repository_name.split("/", 1)[0]


def _higher(first: str | None, second: str | None) -> str | None:
    if first is None or second is None:
        return first or second
    return max(first, second, key=ROLES.index)


def role_of(db: Session, principal: Principal, namespace: str, repository: Repository | None) -> str | None:
    """The principal's role on a repository (or on a namespace, for one not created yet)."""
    user = principal.user
    if user is None:
        return None
    if user.is_admin or user.name == namespace:
        return "owner"
    role = db.scalar(select(Membership.role).join(Organization).where(Organization.name == namespace,
                                                                       Membership.user_id == user.id))
    if repository is not None:
        role = _higher(role, db.scalar(select(Collaborator.role).where(
            Collaborator.repository_id == repository.id, Collaborator.user_id == user.id)))
    return role


def audience_rights(principal: Principal, repository: Repository) -> frozenset[Action]:
    """What the repository's visibility gives everyone in its audience."""
    in_audience = repository.visibility == "public" or (repository.visibility == "internal"
                                                        and principal.user is not None)
    if not in_audience:
        return frozenset()
    return AUDIENCE_RIGHTS | ({Action.PULL} if repository.weights == "downloadable" else set())


def share_rights(principal: Principal, repository: Repository, digest: str | None) -> frozenset[Action]:
    share = principal.share
    if share is None or share.repository_id != repository.id:
        return frozenset()
    if share.digest is not None and digest is not None and digest != share.digest:
        return frozenset()  # a review snapshot shows its own version only: the others are not there for it
    return SHARE_RIGHTS


def permitted_actions(db: Session, principal: Principal, name: str, repository: Repository | None,
                      *, digest: str | None = None, honour_grants: bool = True) -> frozenset[Action]:
    """Everything ``principal`` may do to repository ``name`` (``repository`` if it exists);
    ``digest`` names the version, for links pinned to one."""
    role = role_of(db, principal, namespace_of(name), repository)
    from_role = {action for action in RIGHTS_OF_ROLE.get(role or "", ()) if SCOPE_FOR[action] in principal.scopes}
    if repository is None:  # a push may create it, in a namespace one maintains (and then do the rest)
        actions = set(from_role) if role in ("maintainer", "owner") else set()
    else:
        actions = from_role | audience_rights(principal, repository) | share_rights(principal, repository, digest)
        if principal.version_pull is not None and principal.version_pull[0] == name:
            actions |= {Action.PULL}  # the OCI routes hold it to the one version (oci/access.py: pinned_version)
        if principal.environment_push is not None and principal.environment_push[0] == name:
            actions |= {Action.PUSH}  # the manifest route holds it to one environment (oci/manifests.py)
    if honour_grants and principal.grants is not None:  # a registry token: the OCI actions it names, nothing else
        granted = {Action(a) for a in principal.grants.get(name, frozenset()) if a in OCI_ACTIONS}
        actions &= granted | ({Action.VIEW} if granted else set())
    return frozenset(actions)


# Built once: see TOKEN_BY_HASH in tokens.py.
REPOSITORY_BY_NAME = select(Repository).where(Repository.name == bindparam("name"))


def decide(db: Session, principal: Principal, name: str, action: Action,
           digest: str | None = None) -> tuple[Outcome, Repository | None]:
    repository = db.scalar(REPOSITORY_BY_NAME, {"name": name})
    if action in permitted_actions(db, principal, name, repository, digest=digest):
        return Outcome.ALLOW, repository
    possible = permitted_actions(db, principal, name, repository, digest=digest, honour_grants=False)
    if principal.is_anonymous and not principal.presented_credentials and principal.share is None:
        return Outcome.CHALLENGE, None
    if action in possible:
        return Outcome.CHALLENGE, None  # the registry token in use was minted without this action
    if Action.VIEW in possible and repository is not None:
        return Outcome.DENIED, None
    return Outcome.NOT_FOUND, None


def member_clause(principal: Principal) -> ColumnElement[bool]:
    """The repositories ``principal`` has a role on (its own, its organisations', collaborations)."""
    user = principal.user
    if user is None or "read" not in principal.scopes:
        return false()
    if user.is_admin:
        return true()
    organisations = select(Organization.name).join(Membership).where(Membership.user_id == user.id)
    collaborations = select(Collaborator.repository_id).where(Collaborator.user_id == user.id)
    return or_(Repository.namespace == user.name, Repository.namespace.in_(organisations),
               Repository.id.in_(collaborations))


def visible_clause(principal: Principal) -> ColumnElement[bool]:
    """The repositories ``principal`` may see (:data:`Action.VIEW`), as a filter for a query.

    The same rules as :func:`permitted_actions`, for listings and search that must not load
    every repository to test each.
    """
    audience = Repository.visibility == "public"
    if principal.user is not None:
        audience = or_(audience, Repository.visibility == "internal")
    shared = Repository.id == principal.share.repository_id if principal.share else false()
    return or_(audience, member_clause(principal), shared)
