"""Share links: capability URLs that let whoever holds one use a model's demo and run it.

A link is a random token (``mhs_…``, only its SHA-256 kept) for one repository,
optionally pinned to one digest, with an expiry, a run quota and a revocation time. It
never grants pull. Anonymous links are for double-blind review: every answer given
through one leaves out who owns the model (see ``api/shared.py``).
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from modelhall.registry.auth.principal import ShareGrant
from modelhall.registry.auth.tokens import hash_token
from modelhall.registry.db.models import Repository, ShareLink, User

SHARE_PREFIX = "mhs_"


class ShareLinkError(Exception):
    """A share link that is unknown, expired, revoked or used up; the message says which."""

    def __init__(self, message: str, status: int = 404):
        super().__init__(message)
        self.status = status


def create_share_link(db: Session, repository: Repository, creator: User | None, *, label: str = "",
                      digest: str | None = None, anonymous: bool = False, expires_at: datetime | None = None,
                      run_quota: int | None = None) -> tuple[ShareLink, str]:
    """A new link and its token (shown once)."""
    token = SHARE_PREFIX + secrets.token_urlsafe(32)
    link = ShareLink(repository_id=repository.id, token_hash=hash_token(token), label=label, digest=digest,
                     anonymous=anonymous, expires_at=expires_at, run_quota=run_quota,
                     created_by=creator.id if creator else None)
    db.add(link)
    db.flush()
    return link, token


def link_state(link: ShareLink, now: datetime | None = None) -> str:
    """``active``, ``expired``, ``revoked`` or ``used up``."""
    now = now or datetime.now(UTC)
    if link.revoked_at is not None:
        return "revoked"
    if link.expires_at is not None and link.expires_at <= now:
        return "expired"
    if link.run_quota is not None and link.runs_used >= link.run_quota:
        return "used up"
    return "active"


def find_share_link(db: Session, token: str) -> ShareLink:
    """The link ``token`` opens; a :class:`ShareLinkError` if it opens nothing now.

    A used-up link still opens the model page (its runs are refused one by one).
    """
    link = db.scalar(select(ShareLink).where(ShareLink.token_hash == hash_token(token)))
    if link is None:
        raise ShareLinkError("this share link does not exist")
    state = link_state(link)
    if state == "revoked":
        raise ShareLinkError("this share link was revoked by the model's author", status=410)
    if state == "expired":
        raise ShareLinkError(f"this share link expired on {link.expires_at.isoformat(timespec='minutes')}",  # type: ignore[union-attr]
                             status=410)
    return link


def grant_of(link: ShareLink) -> ShareGrant:
    return ShareGrant(link_id=link.id, repository_id=link.repository_id, digest=link.digest,
                      anonymous=link.anonymous)


def current_grant(db: Session, link_id: int) -> ShareGrant | None:
    """The grant of link ``link_id`` while it still opens something (as :func:`find_share_link` decides)."""
    link = db.get(ShareLink, link_id)
    return grant_of(link) if link is not None and link_state(link) in ("active", "used up") else None


def count_run(db: Session, link_id: int) -> None:
    """Count one run against the link's quota, atomically; a :class:`ShareLinkError` (429) once it is used up."""
    counted = db.execute(update(ShareLink).where(
        ShareLink.id == link_id, ShareLink.revoked_at.is_(None),
        or_(ShareLink.run_quota.is_(None), ShareLink.runs_used < ShareLink.run_quota),
    ).values(runs_used=ShareLink.runs_used + 1))
    db.commit()
    if counted.rowcount == 0:  # type: ignore[attr-defined]
        raise ShareLinkError("this share link has used up its runs; ask the model's author for more", status=429)
