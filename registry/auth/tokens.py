"""Personal access tokens and the short-lived registry tokens of the Docker token flow."""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session, joinedload

from modelhall.registry.auth.scopes import expand_scopes
from modelhall.registry.db.models import AccessToken, User

TOKEN_PREFIX = "mh_"
ISSUER = "modelhall"
SERVICE = "modelhall"
JWT_ALGORITHM = "HS256"
LAST_USED_RESOLUTION = timedelta(minutes=1)


class InvalidTokenError(Exception):
    pass


def hash_token(token: str) -> str:
    """SHA-256 of a token. The tokens are 256 random bits, so a fast hash is enough."""
    return hashlib.sha256(token.encode()).hexdigest()


def create_access_token(db: Session, user: User, scopes: set[str], name: str = "",
                        expires_at: datetime | None = None) -> str:
    """Create a token for ``user`` and return it; only its hash is stored."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    db.add(AccessToken(user_id=user.id, name=name, token_hash=hash_token(token),
                       scopes=" ".join(sorted(expand_scopes(scopes))), expires_at=expires_at))
    db.flush()
    return token


# The statements every request runs are built once (here, in policy.py and in metadata.py):
# building this one, its joinedload above all, took longer than running it.
TOKEN_BY_HASH = (select(AccessToken).where(AccessToken.token_hash == bindparam("token_hash"))
                 .options(joinedload(AccessToken.user)))  # every caller asks whose it is


def find_access_token(db: Session, token: str) -> AccessToken:
    record = db.scalar(TOKEN_BY_HASH, {"token_hash": hash_token(token)})
    if record is None or record.revoked:
        raise InvalidTokenError("unknown or revoked token")
    now = datetime.now(UTC)
    if record.expires_at and record.expires_at < now:
        raise InvalidTokenError("the token has expired")
    if record.last_used_at is None or now - record.last_used_at > LAST_USED_RESOLUTION:
        record.last_used_at = now  # at most once a minute: not a write on every request
        db.commit()
    return record



@dataclass(frozen=True)
class RegistryClaims:
    subject: str | None
    scopes: frozenset[str]
    access: dict[str, frozenset[str]]
    version: tuple[str, frozenset[str]] | None = None  # a version pull token's repository and manifest digests
    environment: tuple[str, str] | None = None  # an environment push token's repository and environment key


VERSION_PULL = "version-pull"
ENVIRONMENT_PUSH = "environment-push"


def issue_version_pull_token(key: str, repository: str, digests: list[str], ttl_seconds: int) -> str:
    """The credential a model pod fetches its bundle with: pull, of one repository's one version (the
    manifests ``digests``: the bundle, and its built environment if any) and their blobs, by no user.

    It names no user (a pod is not one) and grants nothing else: no other version, no push, no API."""
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": SERVICE, "sub": "", "typ": VERSION_PULL, "ver": [repository, sorted(digests)],
              "iat": now, "nbf": now - 5, "exp": now + ttl_seconds, "jti": uuid.uuid4().hex,
              "access": [{"type": "repository", "name": repository, "actions": ["pull"]}]}
    return jwt.encode(claims, key, algorithm=JWT_ALGORITHM)


def issue_environment_push_token(key: str, repository: str, environment: str, ttl_seconds: int) -> str:
    """The credential an environment build Job stores what it built with: push, to one repository, of
    blobs and of one untagged manifest, the environment artifact of key ``environment``; nothing else
    (no tag, no pull, no other repository), by no user. The build runs the requirements' own code,
    which sees this token: it can push nothing but an artifact for the environment it was asked for."""
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": SERVICE, "sub": "", "typ": ENVIRONMENT_PUSH, "env": [repository, environment],
              "iat": now, "nbf": now - 5, "exp": now + ttl_seconds, "jti": uuid.uuid4().hex,
              "access": [{"type": "repository", "name": repository, "actions": ["push"]}]}
    return jwt.encode(claims, key, algorithm=JWT_ALGORITHM)


def issue_registry_token(key: str, subject: str | None, scopes: frozenset[str],
                         access: dict[str, frozenset[str]], ttl_seconds: int) -> tuple[str, int]:
    """A signed token naming the repository actions granted, and the scopes of the credential behind it."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": ISSUER, "aud": SERVICE, "sub": subject or "", "scp": sorted(scopes), "iat": now, "nbf": now - 5,
        "exp": now + ttl_seconds, "jti": uuid.uuid4().hex,
        "access": [{"type": "repository", "name": name, "actions": sorted(actions)}
                   for name, actions in sorted(access.items())],
    }
    return jwt.encode(claims, key, algorithm=JWT_ALGORITHM), now


def verify_registry_token(key: str, token: str) -> RegistryClaims:
    try:
        claims = jwt.decode(token, key, algorithms=[JWT_ALGORITHM], audience=SERVICE, issuer=ISSUER)
    except jwt.ExpiredSignatureError:
        raise InvalidTokenError("the registry token has expired") from None
    except jwt.InvalidTokenError:
        raise InvalidTokenError("the registry token is not valid") from None
    access = {entry["name"]: frozenset(entry["actions"]) for entry in claims.get("access", [])
              if entry.get("type") == "repository"}
    version = (claims["ver"][0], frozenset(claims["ver"][1])) if claims.get("typ") == VERSION_PULL else None
    environment = (str(claims["env"][0]), str(claims["env"][1])) if claims.get("typ") == ENVIRONMENT_PUSH else None
    return RegistryClaims(subject=claims.get("sub") or None, scopes=frozenset(claims.get("scp", [])), access=access,
                          version=version, environment=environment)  # type: ignore[arg-type]
