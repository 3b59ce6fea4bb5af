"""Who is asking: resolved once per request from its ``Authorization`` header, or else the
browser's session cookie, plus a share link if the request carries one."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelhall.registry.auth.scopes import SCOPES
from modelhall.registry.auth.tokens import TOKEN_PREFIX, InvalidTokenError, find_access_token, verify_registry_token
from modelhall.registry.db.models import User


@dataclass(frozen=True)
class ShareGrant:
    """A valid share link the request carries: demo and runs of one repository."""

    link_id: int
    repository_id: int
    digest: str | None
    anonymous: bool

    @property
    def caller(self) -> str:
        """How runs made through the link are recorded: the link, never the person."""
        return f"share-link:{self.link_id}"


@dataclass(frozen=True)
class Principal:
    """An authenticated user (or nobody) and the limits of the credential they used.

    ``scopes`` are the access token's scopes (a browser session has them all). ``grants``
    is set when the request carries a registry token: then only the repository actions it
    names count. ``share`` is a share link the request carries.
    """

    user: User | None = None
    scopes: frozenset[str] = frozenset()
    grants: dict[str, frozenset[str]] | None = None
    presented_credentials: bool = False
    share: ShareGrant | None = None
    via_session: bool = False
    version_pull: tuple[str, frozenset[str]] | None = None  # a model pod's: pull these manifests of one repository
    environment_push: tuple[str, str] | None = None  # a build Job's: push one environment artifact to one repository

    @property
    def for_pods_and_builds(self) -> bool:
        """A model pod's version pull token or a build Job's environment push token: the platform's own."""
        return self.version_pull is not None or self.environment_push is not None

    @property
    def is_anonymous(self) -> bool:
        return self.user is None

    @property
    def name(self) -> str | None:
        return self.user.name if self.user else None


ANONYMOUS = Principal()


class AuthenticationError(Exception):
    """Credentials were presented and are wrong, expired or revoked."""


def principal_from_session(db: Session, session: Mapping[str, Any]) -> Principal:
    """The user a browser logged in as (``/auth/login``); a session holds every scope."""
    user_id = session.get("user_id")
    user = db.get(User, user_id) if isinstance(user_id, int) else None
    if user is None:
        return ANONYMOUS
    return Principal(user=user, scopes=frozenset(SCOPES), presented_credentials=True, via_session=True)


def principal_from_header(db: Session, header: str | None, signing_key: str) -> Principal:
    if not header:
        return ANONYMOUS
    kind, _, value = header.partition(" ")
    kind = kind.lower()
    if kind == "basic":
        return _from_basic(db, value.strip())
    if kind == "bearer":
        value = value.strip()
        if value.startswith(TOKEN_PREFIX):
            return _from_access_token(db, value, expected_user=None)
        return _from_registry_token(db, value, signing_key)
    raise AuthenticationError(f"unsupported authorization scheme {kind!r}")


def _from_basic(db: Session, encoded: str) -> Principal:
    try:
        username, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise AuthenticationError("malformed basic credentials") from None
    return _from_access_token(db, password, expected_user=username or None)


def _from_access_token(db: Session, token: str, expected_user: str | None) -> Principal:
    try:
        record = find_access_token(db, token)
    except InvalidTokenError as error:
        raise AuthenticationError(str(error)) from None
    if expected_user and expected_user != record.user.name:
        raise AuthenticationError("the token does not belong to that user")
    return Principal(user=record.user, scopes=record.scope_set, presented_credentials=True)


def _from_registry_token(db: Session, token: str, signing_key: str) -> Principal:
    try:
        claims = verify_registry_token(signing_key, token)
    except InvalidTokenError as error:
        raise AuthenticationError(str(error)) from None
    if claims.version is not None:
        return Principal(scopes=frozenset({"read"}), grants=claims.access, presented_credentials=True,
                         version_pull=claims.version)
    if claims.environment is not None:
        return Principal(scopes=frozenset({"write"}), grants=claims.access, presented_credentials=True,
                         environment_push=claims.environment)
    user = db.scalar(select(User).where(User.name == claims.subject)) if claims.subject else None
    if claims.subject and user is None:
        raise AuthenticationError("the token's user no longer exists")
    return Principal(user=user, scopes=claims.scopes, grants=claims.access, presented_credentials=True)
