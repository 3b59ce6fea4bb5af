"""Leases in the database: work that must happen once across replicas (the reaper's scale-down,
garbage collection) is done by whichever replica holds the lease for it.

A lease is a row (name, holder, expiry). Taking or renewing it is one conditional ``UPDATE``
(mine, or expired) or, for a name never taken, one ``INSERT`` that at most one replica wins:
both are atomic on SQLite and PostgreSQL alike, so no lock outlives a statement. A holder that
dies stops renewing and its lease passes to another replica once it expires.
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import datetime, timedelta

from sqlalchemy import delete, insert, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from modelhall.registry.db.models import Lease, utcnow


def replica_id() -> str:
    """This process's name as a lease holder: host, pid and a random part (a pid is reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Leases:
    """The leases this replica (``holder``) takes, each for ``ttl`` seconds from its last renewal."""

    def __init__(self, sessions: sessionmaker[Session], holder: str | None = None, ttl: float = 30.0) -> None:
        self.sessions = sessions
        self.holder = holder or replica_id()
        self.ttl = timedelta(seconds=ttl)

    def hold(self, name: str, now: datetime | None = None) -> bool:
        """Take or renew the lease ``name``; whether this replica holds it now."""
        now = now or utcnow()
        expires = now + self.ttl
        with self.sessions() as db:
            renewed = db.execute(update(Lease).where(
                Lease.name == name, (Lease.holder == self.holder) | (Lease.expires_at < now),
            ).values(holder=self.holder, expires_at=expires)).rowcount
            if renewed:
                db.commit()
                return True
            try:
                db.execute(insert(Lease).values(name=name, holder=self.holder, expires_at=expires))
                db.commit()
            except IntegrityError:  # another replica holds it, or took it first
                db.rollback()
                return False
            return True

    def release(self, name: str) -> None:
        """Give ``name`` up now (on shutdown), so another replica need not wait for it to expire."""
        with self.sessions() as db:
            db.execute(delete(Lease).where(Lease.name == name, Lease.holder == self.holder))
            db.commit()
