"""Storage hygiene: DELETE only unlinks, the garbage collector frees only what nothing references
(and nothing in flight), abandoned uploads are swept, ``modelhall admin gc`` and the periodic sweep.

The collector's rules run at function level against SQLite and PostgreSQL; the race, the crash and
the command run against a real registry."""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker

from conftest import MODELHALL, RegistryServer, _postgres_database, unique
from modelhall.adapters.storage import FileBlobStore, StoredItem
from modelhall.registry.context import RegistryContext
from modelhall.registry.db.models import BlobLink, Manifest, Repository, Run, RunFile, UploadSession, utcnow
from modelhall.registry.db.session import make_engine, make_session_factory, migrate
from modelhall.registry.gc import LEASE, collect, run_periodic_collection
from modelhall.registry.leases import Leases
from modelhall.settings import Settings
from oci_helpers import http, push_image, sha256, upload

HOUR = timedelta(hours=1)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from _postgres_database() if request.param == "postgresql" else iter([f"sqlite:///{tmp_path}/gc.db"])


@pytest.fixture
def sessions(database: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(Settings(database=database).database_url)
    migrate(engine)
    try:
        yield make_session_factory(engine)
    finally:
        engine.dispose()


@pytest.fixture
def store(tmp_path: Path) -> FileBlobStore:
    return FileBlobStore(tmp_path / "storage")


def put(store: FileBlobStore, content: bytes) -> str:
    digest = sha256(content)
    store.put(digest, content)
    return digest


def references(sessions: sessionmaker[Session], store: FileBlobStore) -> dict[str, str]:
    """A blob for each kind of reference, and one that nothing references."""
    digests = {kind: put(store, kind.encode()) for kind in ("layer", "manifest", "run file", "garbage")}
    with sessions() as db:
        repository = Repository(name=f"{unique('u')}/gc", namespace="u")
        db.add(repository)
        db.flush()
        db.add(BlobLink(repository_id=repository.id, digest=digests["layer"], size=5))
        db.add(Manifest(repository_id=repository.id, digest=digests["manifest"], media_type="x", size=8))
        run = Run(id=str(uuid.uuid4()), repository_id=repository.id, digest=digests["manifest"], source="api",
                  status="succeeded")
        db.add(run)
        db.flush()
        db.add(RunFile(run_id=run.id, digest=digests["run file"]))
        db.commit()
    return digests


def test_only_unreferenced_blobs_past_the_grace_period_are_freed_and_a_dry_run_frees_nothing(
        sessions: sessionmaker[Session], store: FileBlobStore) -> None:
    digests = references(sessions, store)
    later = utcnow() + 2 * HOUR
    young = collect(sessions, store, blob_grace=3 * HOUR, upload_ttl=24 * HOUR, apply=True, now=later)
    assert young.blobs == [] and store.stat(digests["garbage"]) == len(b"garbage")  # an upload may be in flight
    dry = collect(sessions, store, blob_grace=HOUR, upload_ttl=24 * HOUR, apply=False, now=later)
    assert [item.name for item in dry.blobs] == [digests["garbage"]] and dry.freed_bytes == len(b"garbage")
    assert store.stat(digests["garbage"]) == len(b"garbage")
    applied = collect(sessions, store, blob_grace=HOUR, upload_ttl=24 * HOUR, apply=True, now=later)
    assert [item.name for item in applied.blobs] == [digests["garbage"]]
    assert store.stat(digests["garbage"]) is None
    assert all(store.stat(digests[kind]) is not None for kind in ("layer", "manifest", "run file"))


def test_a_blob_linked_again_while_the_sweep_runs_is_kept(sessions: sessionmaker[Session], store: FileBlobStore,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    digests = references(sessions, store)
    listed = store.blobs

    def blobs_then_a_mount() -> Iterator[StoredItem]:
        items = list(listed())  # the sweep has marked already: now another repository links the garbage
        with sessions() as db:
            repository = Repository(name=f"{unique('u')}/mounted", namespace="u")
            db.add(repository)
            db.flush()
            db.add(BlobLink(repository_id=repository.id, digest=digests["garbage"], size=7))
            db.commit()
        yield from items

    monkeypatch.setattr(store, "blobs", blobs_then_a_mount)
    garbage = collect(sessions, store, blob_grace=HOUR, upload_ttl=24 * HOUR, apply=True, now=utcnow() + 2 * HOUR)
    assert (garbage.blobs, garbage.kept) == ([], 1)
    assert store.stat(digests["garbage"]) == len(b"garbage")


def test_abandoned_uploads_and_their_sessions_are_swept(sessions: sessionmaker[Session], store: FileBlobStore) -> None:
    orphan, chunked, rowless = (str(uuid.uuid4()) for _ in range(3))
    for upload_id, content in ((orphan, b"a monolithic upload cut off"), (chunked, b"first chunk")):
        writer = store.writer(upload_id, append=False)
        writer.write(content)
        writer.close()
    with sessions() as db:
        repository = Repository(name=f"{unique('u')}/uploads", namespace="u")
        db.add(repository)
        db.flush()
        db.add_all([UploadSession(id=chunked, repository_id=repository.id),
                    UploadSession(id=rowless, repository_id=repository.id)])
        db.commit()
    fresh = collect(sessions, store, blob_grace=HOUR, upload_ttl=24 * HOUR, apply=True, now=utcnow() + HOUR)
    assert (fresh.uploads, fresh.sessions) == ([], [])
    assert store.upload_size(chunked) == len(b"first chunk")
    stale = collect(sessions, store, blob_grace=HOUR, upload_ttl=24 * HOUR, apply=True, now=utcnow() + 25 * HOUR)
    assert sorted(item.name for item in stale.uploads) == sorted([orphan, chunked])
    assert sorted(stale.sessions) == sorted([chunked, rowless])
    assert list(store.uploads()) == []
    with sessions() as db:
        assert db.query(UploadSession).count() == 0


def test_the_periodic_sweep_runs_only_on_the_replica_holding_the_lease(
        sessions: sessionmaker[Session], store: FileBlobStore, database: str, tmp_path: Path) -> None:
    garbage = put(store, b"nobody links me")
    settings = Settings(data_dir=tmp_path, database=database, gc_interval=0.05, gc_blob_grace=0)
    context = RegistryContext(settings=settings, engine=make_engine(settings.database_url), sessions=sessions,
                              store=store)
    other = Leases(sessions, "the other replica", ttl=600)
    assert other.hold(LEASE)

    class CountedLeases(Leases):
        refused = 0

        def hold(self, name: str, now=None) -> bool:  # type: ignore[no-untyped-def]
            held = super().hold(name, now)
            CountedLeases.refused += not held
            return held

    async def scenario() -> None:
        collector = asyncio.create_task(run_periodic_collection(context, CountedLeases(sessions, "this one", ttl=600)))
        try:
            await wait_for(lambda: CountedLeases.refused >= 3, "the sweep to try the lease three times")
            assert store.stat(garbage) is not None  # the other replica holds it: this one does nothing
            await asyncio.to_thread(other.release, LEASE)
            await wait_for(lambda: store.stat(garbage) is None, "the sweep to free the blob")
        finally:
            collector.cancel()

    asyncio.run(scenario())
    context.engine.dispose()


async def wait_for(condition, what: str, within: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {within} s for {what}")
        await asyncio.sleep(0.02)


def test_deleting_a_blob_in_one_repository_never_loses_another_repositorys_upload(registry: RegistryServer) -> None:
    """The race that lost 9 of 200 uploads: DELETE in one repository while another commits the same digest."""
    user, token = registry.user()
    client = http(registry.url, token)
    contents = [f"shared blob {uuid.uuid4()}".encode() * 1000 for _ in range(200)]
    for content in contents:
        upload(client, f"{user}/deleter", content)

    with ThreadPoolExecutor(max_workers=8) as pool:
        pairs = []
        for content in contents:  # the DELETE and the upload of each digest run at once, on two threads
            pairs.append(pool.submit(client.delete, f"/v2/{user}/deleter/blobs/{sha256(content)}"))
            pairs.append(pool.submit(client.post, f"/v2/{user}/keeper/blobs/uploads/",
                                     params={"digest": sha256(content)}, content=content))
        answers = [future.result() for future in pairs]
    assert all(answer.status_code in (201, 202) for answer in answers), {a.status_code for a in answers}
    lost = [content for content in contents if client.get(f"/v2/{user}/keeper/blobs/{sha256(content)}").content != content]
    assert lost == []
    digest, _ = push_image(client, f"{user}/keeper", "v1", layers=(contents[0],))
    assert client.get(f"/v2/{user}/keeper/manifests/{digest}").status_code == 200


@pytest.mark.parametrize("database_kind", ["sqlite"], indirect=True)  # the collector's queries: tested above on both
def test_admin_gc_sweeps_what_a_crash_during_an_upload_left(fresh_registry: RegistryServer) -> None:
    """kill -9 during a monolithic upload leaves its bytes; a dry run lists them, --apply frees them."""
    registry = fresh_registry
    user, token = registry.user()
    client = http(registry.url, token)
    deleted = upload(client, f"{user}/kept", b"unlinked by a DELETE")
    assert client.delete(f"/v2/{user}/kept/blobs/{deleted}").status_code == 202
    uploads = registry.data_dir / "storage" / "uploads"
    received = threading.Event()

    def body() -> Iterator[bytes]:
        yield b"x" * 1024 * 1024
        received.wait(30)
        yield b"never sent"

    sender = threading.Thread(target=lambda: _swallow(lambda: httpx.post(
        f"{registry.url}/v2/{user}/kept/blobs/uploads/", params={"digest": sha256(b"whatever")}, content=body(),
        auth=("", token), timeout=30)))
    sender.start()
    deadline = time.monotonic() + 30
    while not any(path.stat().st_size >= 1024 * 1024 for path in uploads.iterdir()):
        assert time.monotonic() < deadline, "the upload never reached the store"
        time.sleep(0.05)
    registry.crash()
    received.set()
    sender.join()
    dry = gc(registry, "--grace", "0", "--upload-ttl", "0")
    assert deleted in dry and "would free" in dry and "1 blobs, 1 uploads" in dry and "dry run" in dry
    assert sum(path.stat().st_size for path in uploads.iterdir()) >= 1024 * 1024
    applied = gc(registry, "--grace", "0", "--upload-ttl", "0", "--apply")
    assert "freed" in applied and "would" not in applied and "1 blobs, 1 uploads" in applied
    assert list(uploads.iterdir()) == []
    stored = registry.data_dir / "storage" / "blobs"
    assert not list(stored.rglob(deleted.split(":")[1]))


def gc(registry: RegistryServer, *args: str) -> str:
    result = subprocess.run([*MODELHALL, "admin", "gc", *args], env={**registry.env, "COLUMNS": "200"},
                            capture_output=True, text=True, check=True)
    return result.stdout


def _swallow(call) -> None:  # type: ignore[no-untyped-def]
    try:
        call()
    except httpx.HTTPError:
        pass  # the registry was killed mid-request: that is the point
