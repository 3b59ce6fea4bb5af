"""Leases: at most one replica holds a lease at a time, on SQLite and PostgreSQL; an expired
lease passes to another; a released one is free at once."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from conftest import _postgres_database
from modelhall.registry.db.models import utcnow
from modelhall.registry.db.session import make_engine, make_session_factory, migrate
from modelhall.registry.leases import Leases


@pytest.fixture(params=["sqlite", "postgresql"])
def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    databases = _postgres_database() if request.param == "postgresql" else iter([f"sqlite:///{tmp_path}/leases.db"])
    for url in databases:
        engine = make_engine(url)
        migrate(engine)
        try:
            yield make_session_factory(engine)
        finally:
            engine.dispose()


def test_one_holder_at_a_time_and_renewal_keeps_it(sessions: sessionmaker[Session]) -> None:
    a, b = Leases(sessions, "replica-a", ttl=30), Leases(sessions, "replica-b", ttl=30)
    assert a.hold("reaper")
    assert not b.hold("reaper")
    assert a.hold("reaper")  # renewed
    assert b.hold("gc")  # another lease is another matter
    assert not a.hold("gc")


def test_an_expired_lease_passes_to_another_replica(sessions: sessionmaker[Session]) -> None:
    a, b = Leases(sessions, "replica-a", ttl=30), Leases(sessions, "replica-b", ttl=30)
    now = utcnow()
    assert a.hold("reaper", now)
    assert not b.hold("reaper", now + timedelta(seconds=29))
    assert b.hold("reaper", now + timedelta(seconds=31))  # a died and stopped renewing
    assert not a.hold("reaper", now + timedelta(seconds=32))


def test_a_released_lease_is_free_at_once(sessions: sessionmaker[Session]) -> None:
    a, b = Leases(sessions, "replica-a"), Leases(sessions, "replica-b")
    assert a.hold("gc")
    b.release("gc")  # only the holder can release
    assert not b.hold("gc")
    a.release("gc")
    assert b.hold("gc")
