"""The registry's metadata. Blob bytes live in the blob store; this is everything else."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.types import TypeDecorator
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from modelhall.registry.auth.scopes import expand_scopes


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that always comes back timezone-aware, in UTC. (SQLite stores no zone, and a
    naive datetime would leave the API answering times that are not RFC 3339.)"""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON}


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    email: Mapped[str | None] = mapped_column(String(320))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    memberships: Mapped[list[Membership]] = relationship(back_populates="user", cascade="all, delete-orphan")


class Organization(Base):
    __tablename__ = "organizations"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    memberships: Mapped[list[Membership]] = relationship(back_populates="organization", cascade="all, delete-orphan")


class Identity(Base):
    """A login at an OpenID provider (issuer + subject), linked to the user it created."""

    __tablename__ = "identities"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    issuer: Mapped[str] = mapped_column(String(255))
    subject: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (UniqueConstraint("issuer", "subject"),)


ROLES = ("reader", "maintainer", "owner")  # ranked: each includes the ones before it


class Membership(Base):
    """A user's role in an organisation. ``source`` is ``manual``, or the OpenID provider whose
    group claim granted it (re-synced at each login through that provider)."""

    __tablename__ = "memberships"

    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    role: Mapped[str] = mapped_column(String(16), default="maintainer")
    source: Mapped[str] = mapped_column(String(64), default="manual")

    organization: Mapped[Organization] = relationship(back_populates="memberships")
    user: Mapped[User] = relationship(back_populates="memberships")


class AccessToken(Base):
    """A personal access token; only its SHA-256 is kept, the token is shown once."""

    __tablename__ = "access_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(128), default="")
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)

    user: Mapped[User] = relationship()

    @property
    def scope_set(self) -> frozenset[str]:
        """The stored scopes and every scope they include (ranked: a new scope joins older tokens)."""
        return expand_scopes(frozenset(self.scopes.split()))


class Repository(Base):
    __tablename__ = "repositories"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    namespace: Mapped[str] = mapped_column(String(64), index=True)
    visibility: Mapped[str] = mapped_column(String(16), default="private")  # public|internal|private
    weights: Mapped[str] = mapped_column(String(16), default="downloadable")  # downloadable|hidden
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow, index=True)
    # The catalog: the newest version's facts, kept here so that listing and search read one row
    # per repository (see registry/catalog.py).
    latest_digest: Mapped[str | None] = mapped_column(String(135))
    task: Mapped[str | None] = mapped_column(String(64), index=True)
    framework: Mapped[str | None] = mapped_column(String(64))
    license: Mapped[str | None] = mapped_column(String(64))
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    input_types: Mapped[str] = mapped_column(String(255), default="")  # " image text " (spaces around each)
    output_types: Mapped[str] = mapped_column(String(255), default="")
    search_text: Mapped[str] = mapped_column(Text, default="")  # lower case: name, description, tags, model card
    run_count: Mapped[int] = mapped_column(default=0, index=True)

    @property
    def is_public(self) -> bool:
        return self.visibility == "public"


class Collaborator(Base):
    """A user given a role on one repository, beside its namespace's owners and members."""

    __tablename__ = "collaborators"

    repository_id: Mapped[int] = mapped_column(ForeignKey("repositories.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    role: Mapped[str] = mapped_column(String(16), default="reader")


class ShareLink(Base):
    """A capability URL for one repository: demo and runs, never pull.

    Only the token's SHA-256 is kept. ``digest`` pins the link to one version (a review
    snapshot); ``anonymous`` hides every trace of the owner from whoever holds it.
    """

    __tablename__ = "share_links"

    id: Mapped[int] = mapped_column(primary_key=True)
    repository_id: Mapped[int] = mapped_column(ForeignKey("repositories.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str] = mapped_column(String(128), default="")
    digest: Mapped[str | None] = mapped_column(String(135))
    anonymous: Mapped[bool] = mapped_column(Boolean, default=False)
    expires_at: Mapped[datetime | None]
    run_quota: Mapped[int | None]
    runs_used: Mapped[int] = mapped_column(default=0)
    revoked_at: Mapped[datetime | None]
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class BlobLink(Base):
    """A blob that belongs to a repository: reachable through it, and only through it."""

    __tablename__ = "blob_links"

    repository_id: Mapped[int] = mapped_column(ForeignKey("repositories.id", ondelete="CASCADE"), primary_key=True)
    digest: Mapped[str] = mapped_column(String(135), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("ix_blob_links_digest", "digest"),)


class Manifest(Base):
    """A manifest pushed to a repository; a Modelhall bundle also carries its parsed spec."""

    __tablename__ = "manifests"

    id: Mapped[int] = mapped_column(primary_key=True)
    repository_id: Mapped[int] = mapped_column(ForeignKey("repositories.id", ondelete="CASCADE"))
    digest: Mapped[str] = mapped_column(String(135))
    media_type: Mapped[str] = mapped_column(String(255))
    artifact_type: Mapped[str | None] = mapped_column(String(255))
    subject: Mapped[str | None] = mapped_column(String(135), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    total_size: Mapped[int] = mapped_column(BigInteger, default=0)
    annotations: Mapped[dict[str, Any]] = mapped_column(default=dict)
    spec: Mapped[dict[str, Any] | None]
    readme: Mapped[str | None] = mapped_column(Text)
    thumbnail: Mapped[bytes | None] = mapped_column(LargeBinary)  # a small PNG of the first example image
    # an environment artifact's requirements key, set only when a build Job's token stored it
    environment_key: Mapped[str | None] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (UniqueConstraint("repository_id", "digest"),)

    @property
    def is_bundle(self) -> bool:
        return self.spec is not None


class Tag(Base):
    __tablename__ = "tags"

    repository_id: Mapped[int] = mapped_column(ForeignKey("repositories.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    digest: Mapped[str] = mapped_column(String(135))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class UploadSession(Base):
    """A blob upload in progress. Its bytes are in the blob store under the same id."""

    __tablename__ = "upload_sessions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    repository_id: Mapped[int] = mapped_column(ForeignKey("repositories.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Deployment(Base):
    """A version (repository + manifest digest) as something that runs: its build, and its workers' desired state.

    Kept here rather than in a runtime's memory so a restarted registry, or another
    replica, knows what was built and what should be running.
    """

    __tablename__ = "deployments"

    id: Mapped[int] = mapped_column(primary_key=True)
    repository_id: Mapped[int] = mapped_column(ForeignKey("repositories.id", ondelete="CASCADE"))
    digest: Mapped[str] = mapped_column(String(135))
    build_status: Mapped[str] = mapped_column(String(16), default="pending")  # pending|building|ready|failed
    build_error: Mapped[str | None] = mapped_column(Text)
    environment: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default="sleeping")  # sleeping|starting|running|failed
    state_detail: Mapped[str | None] = mapped_column(Text)
    desired_replicas: Mapped[int] = mapped_column(default=0)
    # extra workers a replica has been allowed to start and has not recorded yet: with the recorded
    # ones, what ``scaling.max`` caps across every replica
    pending_workers: Mapped[int] = mapped_column(default=0, server_default="0")
    pending_since: Mapped[datetime | None]  # the newest of those places: they lapse with a replica that died
    restarts: Mapped[int] = mapped_column(default=0)
    last_request_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (UniqueConstraint("repository_id", "digest"),)


class Worker(Base):
    """One model-server process of a deployment, as the runtime that started it reported it."""

    __tablename__ = "workers"

    id: Mapped[int] = mapped_column(primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"), index=True)
    handle: Mapped[str] = mapped_column(String(255))  # the runtime's opaque id for it
    endpoint: Mapped[str] = mapped_column(String(255))  # unix:/path or http://host:port
    state: Mapped[str] = mapped_column(String(16), default="starting")  # starting|ready|stopped|crashed
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    stopped_at: Mapped[datetime | None]
    journal_cursor: Mapped[int] = mapped_column(default=0)  # the last journal entry read from it
    journal_error: Mapped[str | None] = mapped_column(Text)  # why entries of its journal were refused
    last_used_at: Mapped[datetime | None]  # its last prediction through any replica, written once a round


class Run(Base):
    """One prediction: through the predict API, the demo, or an async run.

    ``inputs`` and ``outputs`` hold small values inline and files as ``{"digest", "name",
    "size"}`` with their bytes in the blob store. ``caller`` is the user's name, or null
    for anonymous callers.
    """

    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    repository_id: Mapped[int] = mapped_column(ForeignKey("repositories.id", ondelete="CASCADE"), index=True)
    digest: Mapped[str] = mapped_column(String(135))
    source: Mapped[str] = mapped_column(String(16))  # api|demo|async
    caller: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))  # queued|running|succeeded|failed
    cold: Mapped[bool | None] = mapped_column(Boolean)
    inputs: Mapped[dict[str, Any]] = mapped_column(default=dict)
    outputs: Mapped[dict[str, Any] | None]
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[float | None]
    logs: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    finished_at: Mapped[datetime | None]
    claimed_by: Mapped[str | None] = mapped_column(String(128))  # the replica carrying out an async run


class RunFile(Base):
    """A file the platform itself stored for a run (an upload, or what a model returned): the only
    blobs a run's file route serves. A digest written into a run's inputs is not one."""

    __tablename__ = "run_files"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    digest: Mapped[str] = mapped_column(String(135), primary_key=True)


class Lease(Base):
    """Who does a piece of work that must happen once across replicas, until when (see registry/leases.py)."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime]


class LoginLink(Base):
    """A one-time login for a user, made on the server (``modelhall admin login-link``): only the
    SHA-256 of its token is kept; spent (``used_at``) by the first login, dead after ``expires_at``."""

    __tablename__ = "login_links"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]


class SpentTicket(Base):
    """A demo ticket that was used, kept until it would have expired anyway (see auth/demo_tickets.py)."""

    __tablename__ = "spent_tickets"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # the ticket's jti
    expires_at: Mapped[datetime] = mapped_column(index=True)
