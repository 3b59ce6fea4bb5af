"""Garbage collection: blob bytes go only when nothing references them; abandoned uploads are swept.

Deleting a blob or a manifest through the OCI API only forgets that a repository holds it
(``DELETE`` unlinks), because the same bytes may be held by another repository, or be in the
middle of being committed to one. Removing bytes is this module's job alone, mark and sweep
as distribution's garbage collector does it, but online:

- **mark**: every digest the database references: blob links (layers, configs and plain
  blobs of every repository), manifests, and the files stored for runs;
- **sweep**: every blob in the store that is not marked *and* was last written longer than
  the grace period ago. An upload writes its bytes, publishes the blob, then links it: the
  grace period covers that gap (and a run storing its files before its row is committed).
  Each candidate's references are looked up once more right before it is deleted, so a
  blob that was linked again (a mount, a push of the same bytes) while the sweep ran stays.

Upload sessions whose bytes were not written to for ``upload_ttl`` (a client that gave up,
a registry killed during a monolithic upload) lose their bytes and their database row.

``modelhall admin gc`` runs it by hand (a dry run unless ``--apply``); each registry replica
runs :func:`run_periodic_collection`, and the one holding the ``garbage-collection`` lease sweeps.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial

from sqlalchemy import delete, select, union
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from modelhall.adapters.storage import BlobStore, StoredItem
from modelhall.registry.context import RegistryContext
from modelhall.registry.db.models import BlobLink, Manifest, RunFile, UploadSession, utcnow
from modelhall.registry.leases import Leases

logger = logging.getLogger(__name__)
LEASE = "garbage-collection"
REFERENCED_DIGESTS = union(select(BlobLink.digest), select(Manifest.digest), select(RunFile.digest))


@dataclass
class Garbage:
    """What a collection found (and, unless it was a dry run, removed)."""

    blobs: list[StoredItem] = field(default_factory=list)
    uploads: list[StoredItem] = field(default_factory=list)
    sessions: list[str] = field(default_factory=list)  # upload session rows, by id
    kept: int = 0  # candidates referenced again by the time the sweep reached them

    @property
    def freed_bytes(self) -> int:
        return sum(item.size for item in self.blobs) + sum(item.size for item in self.uploads)


def referenced_digests(db: Session) -> set[str]:
    return set(db.scalars(REFERENCED_DIGESTS))


def is_referenced(db: Session, digest: str) -> bool:
    return any(db.scalar(select(column).where(column == digest).limit(1)) is not None
               for column in (BlobLink.digest, Manifest.digest, RunFile.digest))


def collect(sessions: sessionmaker[Session], store: BlobStore, *, blob_grace: timedelta, upload_ttl: timedelta,
            apply: bool, now: datetime | None = None) -> Garbage:
    """Find (and with ``apply``, remove) unreferenced blobs and abandoned uploads."""
    now = now or utcnow()
    garbage = Garbage()
    with sessions() as db:
        marked = referenced_digests(db)
    for item in store.blobs():
        if item.name in marked or item.modified > now - blob_grace:
            continue
        if apply:
            with sessions() as db:
                if is_referenced(db, item.name):
                    garbage.kept += 1
                    continue
            store.delete(item.name)
        garbage.blobs.append(item)
    _collect_uploads(sessions, store, now - upload_ttl, apply, garbage)
    return garbage


def _collect_uploads(sessions: sessionmaker[Session], store: BlobStore, cutoff: datetime, apply: bool,
                     garbage: Garbage) -> None:
    """Upload bytes not written to since ``cutoff``, and session rows whose bytes are gone or stale."""
    listed = list(store.uploads())
    garbage.uploads = [item for item in listed if item.modified < cutoff]
    live = {item.name for item in listed if item.modified >= cutoff}
    with sessions() as db:
        garbage.sessions = [session_id for session_id, updated in db.execute(
            select(UploadSession.id, UploadSession.updated_at)) if session_id not in live and updated < cutoff]
        if not apply:
            return
        for item in garbage.uploads:
            store.cancel_upload(item.name)
        if garbage.sessions:
            db.execute(delete(UploadSession).where(UploadSession.id.in_(garbage.sessions)))
            db.commit()


async def run_periodic_collection(context: RegistryContext, leases: Leases | None = None) -> None:
    """Collect every ``gc_interval`` seconds on whichever replica holds the lease; forever.

    The lease outlives two rounds, so a replica that died hands the work on within two intervals.
    A failing round is logged and the next one runs.
    """
    settings = context.settings
    leases = leases or Leases(context.sessions, ttl=max(2 * settings.gc_interval, 60.0))
    try:
        while True:
            await asyncio.sleep(settings.gc_interval)
            try:
                if not await run_in_threadpool(leases.hold, LEASE):
                    continue
                garbage = await run_in_threadpool(partial(
                    collect, context.sessions, context.store, blob_grace=timedelta(seconds=settings.gc_blob_grace),
                    upload_ttl=timedelta(seconds=settings.upload_ttl), apply=True))
                if garbage.blobs or garbage.uploads or garbage.sessions:
                    logger.info("garbage collection freed %d bytes: %d blobs, %d uploads, %d upload sessions",
                                garbage.freed_bytes, len(garbage.blobs), len(garbage.uploads), len(garbage.sessions))
            except Exception:  # noqa: BLE001 - logged, and the loop must go on
                logger.exception("a garbage collection round failed")
    finally:
        await run_in_threadpool(leases.release, LEASE)
