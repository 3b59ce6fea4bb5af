"""Two registry replicas — two real ``modelhall up`` processes on different ports — on one PostgreSQL
database and one blob store, sharing their signing key: nothing one replica keeps is needed by the other.

The blob store is chosen in one place, the ``replica_storage`` fixture: one S3 bucket (a real SeaweedFS),
as a cluster would run them, and one folder both replicas mount (a shared file system).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import jwt
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from conftest import RegistryServer, _postgres_database, require_tool
from modelhall.adapters.runtimes.local import LocalRuntime
from modelhall.adapters.storage.filesystem import FileBlobStore
from modelhall.registry.context import RegistryContext
from modelhall.registry.deployments import Deployments
from modelhall.registry.db.models import Deployment, Lease, Repository, Run, Worker
from modelhall.registry.db.session import make_engine, make_session_factory, migrate
from modelhall.registry.runs import JournalReader, JournalTaken, RunTicket, RunTickets
from modelhall.settings import Settings
from oci_helpers import http, image_manifest, sha256
from s3_server import SeaweedFS
from test_runtime import pid_alive, pid_of, predict, push, quick_hello, runs_of, status, wait_for
from test_oras import oras_client
from test_sharing import share, urlpath
from test_skopeo import make_image_layout, skopeo

IDLE_TIMEOUT = 2
RUN_SECONDS = 120  # a cold start (a build) and six runs
COUNTING_MODEL = '''
import time

CALLS = 0


def predict(name: str, style: str = "plain") -> str:
    """Counts its calls (one worker process): a run carried out twice shows as a number seen twice."""
    global CALLS
    CALLS += 1
    if name == "slow":
        time.sleep(3600)
    return str(CALLS)
'''

WHICH_WORKER_MODEL = '''
import time
import uuid

WORKER = uuid.uuid4().hex


def predict(name: str, style: str = "plain") -> str:
    """Answers, slowly, which worker process it is."""
    time.sleep(1.5)
    return WORKER
'''


@pytest.fixture(scope="module", params=["s3", "file"])
def replica_storage(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The one blob store both replicas use: ``MODELHALL_STORAGE`` and what reaching it takes."""
    if request.param == "file":
        return {"MODELHALL_STORAGE": f"file://{tmp_path_factory.mktemp('shared-blobs')}"}
    s3: SeaweedFS = request.getfixturevalue("s3_server")
    return {"MODELHALL_STORAGE": s3.storage_url(s3.new_bucket()), **s3.env}


@dataclass
class Replicas:
    a: RegistryServer
    b: RegistryServer
    sessions: sessionmaker[Session]  # the shared database, as the test reads it

    def by_pid(self, pid: int) -> RegistryServer:
        return next(replica for replica in (self.a, self.b) if replica.process and replica.process.pid == pid)

    def holder_of(self, lease: str) -> RegistryServer | None:
        """The replica that holds ``lease`` now (a holder is named ``host:pid:random``)."""
        with self.sessions() as db:
            holder = db.scalar(select(Lease.holder).where(Lease.name == lease))
        return self.by_pid(int(holder.split(":")[1])) if holder else None

    def run(self, run_id: str) -> Run:
        with self.sessions() as db:
            run = db.get(Run, run_id)
            assert run is not None
            return run


@pytest.fixture(scope="module")
def replicas(replica_storage: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    """Replicas A and B: same database, same blob store, same key; each its own port and data folder."""
    root = tmp_path_factory.mktemp("replicas")
    key = secrets.token_urlsafe(48)
    for database in _postgres_database():
        env = {**replica_storage, "MODELHALL_SECRET_KEY": key, "MODELHALL_REAPER_INTERVAL": "0.5"}
        a = RegistryServer(data_dir=root / "a", database=database, extra_env=env)
        b = RegistryServer(data_dir=root / "b", database=database, extra_env=env)
        engine = a.engine()
        try:
            with ThreadPoolExecutor(2) as starting:  # at once: a replica's start is mostly imports
                list(starting.map(RegistryServer.start, (a, b)))
            yield Replicas(a, b, make_session_factory(engine))
        finally:
            engine.dispose()
            a.stop()
            b.stop()


def test_a_chunked_upload_started_on_one_replica_is_finished_on_the_other(replicas: Replicas) -> None:
    user, token = replicas.a.user()
    a, b = http(replicas.a.url, token), http(replicas.b.url, token)
    repository = f"{user}/chunked"
    first, second = os.urandom(300_000), os.urandom(200_000)
    started = a.post(f"/v2/{repository}/blobs/uploads/")
    assert started.status_code == 202
    location = started.headers["location"]
    assert a.patch(location, content=first, headers={"Content-Range": f"0-{len(first) - 1}"}).status_code == 202
    progress = b.get(location)
    assert (progress.status_code, progress.headers["range"]) == (204, f"0-{len(first) - 1}")
    continued = b.patch(location, content=second,
                        headers={"Content-Range": f"{len(first)}-{len(first) + len(second) - 1}"})
    assert continued.status_code == 202 and continued.headers["range"] == f"0-{len(first) + len(second) - 1}"
    digest = sha256(first + second)
    assert b.put(location, params={"digest": digest}).status_code == 201
    assert a.get(location).status_code == 404  # the session is over on every replica
    assert a.get(f"/v2/{repository}/blobs/{digest}", follow_redirects=True).content == first + second


def test_a_wrong_digest_on_the_other_replica_is_refused_and_publishes_nothing(replicas: Replicas) -> None:
    user, token = replicas.a.user()
    a, b = http(replicas.a.url, token), http(replicas.b.url, token)
    repository = f"{user}/wrong"
    location = a.post(f"/v2/{repository}/blobs/uploads/").headers["location"]
    a.patch(location, content=b"what was sent").raise_for_status()
    claimed = sha256(b"something else")
    refused = b.put(location, params={"digest": claimed})
    assert refused.status_code == 400 and refused.json()["errors"][0]["code"] == "DIGEST_INVALID"
    assert a.head(f"/v2/{repository}/blobs/{claimed}").status_code == 404
    assert b.head(f"/v2/{repository}/blobs/{sha256(b'what was sent')}").status_code == 404


def test_a_push_to_one_replica_is_pulled_byte_for_byte_from_the_other(replicas: Replicas) -> None:
    user, token = replicas.a.user()
    a, b = http(replicas.a.url, token), http(replicas.b.url, token)
    repository = f"{user}/image"
    config, layer = b'{"architecture": "amd64"}', os.urandom(1_000_000)
    for blob in (config, layer):
        a.post(f"/v2/{repository}/blobs/uploads/", params={"digest": sha256(blob)}, content=blob).raise_for_status()
    manifest = image_manifest(config, [layer])
    sent = json.dumps(manifest).encode()
    a.put(f"/v2/{repository}/manifests/v1", content=sent,
          headers={"Content-Type": manifest["mediaType"]}).raise_for_status()
    pulled = b.get(f"/v2/{repository}/manifests/v1", headers={"Accept": manifest["mediaType"]})
    assert pulled.content == sent and pulled.headers["docker-content-digest"] == sha256(sent)
    assert b.get(f"/v2/{repository}/blobs/{sha256(layer)}", follow_redirects=True).content == layer
    ranged = b.get(f"/v2/{repository}/blobs/{sha256(layer)}", headers={"Range": "bytes=10-19"}, follow_redirects=True)
    assert (ranged.status_code, ranged.content) == (206, layer[10:20])


def test_oras_and_skopeo_pushes_alternating_between_replicas_stay_valid(replicas: Replicas, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    require_tool("skopeo", "apt-get install skopeo")
    user, token = replicas.a.user()
    monkeypatch.chdir(tmp_path)  # oras-py names pushed files by their relative paths
    for index, pusher in enumerate([replicas.a, replicas.b] * 2):
        name = f"file-{index}.txt"
        (tmp_path / name).write_bytes(os.urandom(50_000))
        oras_client(pusher, user, token).push(target=f"{pusher.host}/{user}/shared:oras-{index}", files=[name])
        layout = tmp_path / f"layout-{index}"
        make_image_layout(layout, "v1")
        skopeo("copy", "--dest-tls-verify=false", "--dest-creds", f"{user}:{token}", f"oci:{layout}:v1",
               f"docker://{pusher.host}/{user}/shared:skopeo-{index}")
    for puller in (replicas.a, replicas.b):  # every version, from either replica
        for index in range(4):
            out = tmp_path / f"out-{puller.port}-{index}"
            oras_client(puller, user, token).pull(target=f"{puller.host}/{user}/shared:oras-{index}", outdir=str(out))
            name = f"file-{index}.txt"
            assert (out / name).read_bytes() == (tmp_path / name).read_bytes()
            copied = tmp_path / f"copied-{puller.port}-{index}"
            skopeo("copy", "--src-tls-verify=false", "--src-creds", f"{user}:{token}",
                   f"docker://{puller.host}/{user}/shared:skopeo-{index}", f"oci:{copied}:v1")
            assert (copied / "index.json").exists()


def test_a_model_woken_through_one_replica_is_served_through_the_other_and_sleeps_once_both_are_idle(
        replicas: Replicas, tmp_path: Path) -> None:
    user, _, _ = push(replicas.a, quick_hello(tmp_path, idle_timeout=IDLE_TIMEOUT), "shared-model")
    repository = f"{user}/shared-model"
    assert predict(replicas.a, repository, "Ada").json()["outputs"] == {"greeting": "Hello, Ada."}
    [worker] = status(replicas.a, repository)["workers"]
    assert predict(replicas.b, repository, "Bo").json()["outputs"] == {"greeting": "Hello, Bo."}
    assert [w["id"] for w in status(replicas.b, repository)["workers"]] == [worker["id"]]  # adopted, not started
    reaper = replicas.holder_of("reaper")
    assert reaper is not None
    other = replicas.b if reaper is replicas.a else replicas.a
    until = time.monotonic() + 3 * IDLE_TIMEOUT
    while time.monotonic() < until:  # requests only through the replica that does not put models to sleep
        assert predict(other, repository, "again").status_code == 200
        time.sleep(IDLE_TIMEOUT / 4)
    awake = status(reaper, repository)
    assert awake["state"] == "running" and [w["id"] for w in awake["workers"]] == [worker["id"]]
    wait_for(lambda: status(other, repository)["state"] == "sleeping", "scaling to zero once neither has requests")
    wait_for(lambda: not pid_alive(pid_of(worker)), "the worker process ending")
    assert [w["state"] for w in status(replicas.b, repository)["workers"]] == ["stopped"]


def test_scaling_max_counts_every_replicas_workers_and_a_worker_busy_through_one_is_not_stopped_by_the_other(
        replicas: Replicas, tmp_path: Path) -> None:
    bundle = quick_hello(tmp_path, idle_timeout=IDLE_TIMEOUT, model=WHICH_WORKER_MODEL,
                         scaling=", concurrency: 1, queue: 16")
    spec = (bundle / "modelhall.yaml").read_text()
    (bundle / "modelhall.yaml").write_text(spec.replace("min: 0, max: 1", "min: 1, max: 2"))
    user, _, _ = push(replicas.a, bundle, "elastic")
    repository = f"{user}/elastic"

    def answers(replica: RegistryServer, calls: int) -> set[str]:
        with ThreadPoolExecutor(calls) as pool:
            responses = list(pool.map(lambda i: predict(replica, repository, f"n{i}"), range(calls)))
        assert [response.status_code for response in responses] == [200] * calls
        return {response.json()["outputs"]["greeting"] for response in responses}

    first = answers(replicas.a, 1)
    assert len(first | answers(replicas.a, 6)) == 2  # A, saturated, started the second and last worker
    ready = [w["id"] for w in status(replicas.a, repository)["workers"] if w["state"] == "ready"]
    assert len(ready) == 2
    seen: set[str] = set()
    until = time.monotonic() + 3 * IDLE_TIMEOUT
    while time.monotonic() < until:  # B, saturated too, keeps both busy; A sees none of it but in the database
        seen |= answers(replicas.b, 3)
    assert len(seen) == 2  # no third worker: B found the most taken and served through A's two
    workers = status(replicas.b, repository)["workers"]
    assert [(w["id"], w["state"]) for w in workers] == [(worker, "ready") for worker in ready]
    wait_for(lambda: [w["state"] for w in status(replicas.a, repository)["workers"]] == ["ready", "stopped"],
             "the extra worker stopping once neither replica uses it")


def test_an_async_run_queued_through_one_replica_runs_exactly_once(replicas: Replicas, tmp_path: Path) -> None:
    user, token, _ = push(replicas.a, quick_hello(tmp_path, idle_timeout=300, model=COUNTING_MODEL), "counted")
    repository = f"{user}/counted"
    a = http(replicas.a.url, token)
    queued = [a.post(f"/api/v1/repos/{repository}/runs", json={"inputs": {"name": f"n{i}"}}).json()["id"]
              for i in range(6)]
    wait_for(lambda: all(replicas.run(run_id).status in ("succeeded", "failed") for run_id in queued),
             "the runs completing", seconds=RUN_SECONDS)
    assert [(replicas.run(run_id).status, replicas.run(run_id).error) for run_id in queued] == [("succeeded", None)] * 6
    assert sorted(int(replicas.run(run_id).outputs["greeting"]) for run_id in queued) == [1, 2, 3, 4, 5, 6]
    assert len(status(replicas.b, repository)["workers"]) == 1  # both replicas carried them out on one worker
    with ThreadPoolExecutor(4) as pool:  # both replicas collect the worker's journal at once, twice each
        listed = list(pool.map(lambda replica: runs_of(replica, repository, token),
                               [replicas.a, replicas.b, replicas.a, replicas.b]))
    assert all(sorted(run["id"] for run in runs) == sorted(queued) for runs in listed)
    assert a.get(f"/api/v1/repos/{repository}").json()["run_count"] == 6


def test_runs_share_link_quotas_and_token_last_use_are_counted_across_replicas(replicas: Replicas,
                                                                              tmp_path: Path) -> None:
    user, token, _ = push(replicas.a, quick_hello(tmp_path, idle_timeout=300), "quota", public=False)
    repository = f"{user}/quota"
    link = share(http(replicas.a.url, token), repository, run_quota=3)
    header = {"X-Modelhall-Share": urlpath(link["url"])[3:]}
    codes = [httpx.post(f"{replica.url}/api/v1/shared/predict", json={"inputs": {"name": "q"}}, headers=header,
                        timeout=180).status_code
             for replica in (replicas.a, replicas.b, replicas.a, replicas.b)]
    assert codes == [200, 200, 200, 429]
    assert httpx.get(f"{replicas.a.url}/api/v1/shared", headers=header).json()["runs_left"] == 0
    assert predict(replicas.b, repository, "owner", token).status_code == 200
    wait_for(lambda: len(runs_of(replicas.a, repository, token)) == 4, "the four runs in the history")
    assert http(replicas.b.url, token).get(f"/api/v1/repos/{repository}").json()["run_count"] == 4

    _, admin_token = replicas.a.user("admin")
    created = http(replicas.a.url, admin_token).post("/api/v1/tokens", json={"name": "on-b", "scope": "read"})
    assert http(replicas.b.url, created.json()["token"]).get("/api/v1/whoami").status_code == 200
    listed = {t["name"]: t for t in http(replicas.a.url, admin_token).get("/api/v1/tokens").json()}
    assert listed["on-b"]["last_used_at"] is not None


def test_a_registry_token_from_one_replica_works_on_the_other_and_a_forged_one_on_neither(replicas: Replicas) -> None:
    user, token = replicas.a.user()
    issued = httpx.get(f"{replicas.a.url}/token", params={"service": "modelhall",
                                                          "scope": f"repository:{user}/tokened:push,pull"},
                       auth=(user, token))
    registry_token = issued.json()["token"]
    blob = b"pushed with A's token on B"
    pushed = httpx.post(f"{replicas.b.url}/v2/{user}/tokened/blobs/uploads/", params={"digest": sha256(blob)},
                        content=blob, headers={"Authorization": f"Bearer {registry_token}"})
    assert pushed.status_code == 201
    forged = jwt.encode(jwt.decode(registry_token, options={"verify_signature": False}), "an attacker's own key, as long as the replicas' one",
                        algorithm="HS256")
    for replica in (replicas.a, replicas.b):
        refused = httpx.get(f"{replica.url}/v2/{user}/tokened/blobs/{sha256(blob)}",
                            headers={"Authorization": f"Bearer {forged}"})
        assert refused.status_code == 401
    accepted = httpx.get(f"{replicas.a.url}/v2/{user}/tokened/blobs/{sha256(blob)}",
                         headers={"Authorization": f"Bearer {registry_token}"}, follow_redirects=True)
    assert accepted.content == blob


def test_a_demo_ticket_from_one_replica_is_spent_on_the_other(replicas: Replicas, tmp_path: Path) -> None:
    user, token, _ = push(replicas.a, quick_hello(tmp_path, idle_timeout=300), "ticketed", public=False)
    asked = http(replicas.a.url, token).post(f"/api/v1/repos/{user}/ticketed/demo-ticket")
    location = asked.json()["url"]
    assert location.startswith(f"{replicas.a.demo_url}/live/")
    on_b = location.replace(replicas.a.demo_url, replicas.b.demo_url)
    assert httpx.get(on_b).status_code == 303  # A's ticket, accepted by B's demo origin
    for again in (location, on_b):
        refused = httpx.get(again)
        assert (refused.status_code, refused.json()["detail"]) == (
            403, "this demo ticket has been used already: open the demo again from the registry or the gallery")


def test_one_replica_holds_the_reaper_lease(replicas: Replicas) -> None:
    wait_for(lambda: replicas.holder_of("reaper") is not None, "a replica taking the reaper's lease")
    with replicas.sessions() as db:
        alive = db.scalars(select(Lease.holder).where(Lease.name.startswith("alive:"))).all()
    assert {replicas.by_pid(int(holder.split(":")[1])).port for holder in alive} >= {replicas.a.port, replicas.b.port}


# Last: it kills a replica (and starts it again for whatever runs after).
def test_an_async_run_whose_replica_is_killed_is_failed_with_the_reason_never_lost(replicas: Replicas,
                                                                                   tmp_path: Path) -> None:
    user, token, _ = push(replicas.a, quick_hello(tmp_path, idle_timeout=300, model=COUNTING_MODEL), "killed")
    repository = f"{user}/killed"
    a = http(replicas.a.url, token)
    run_id = a.post(f"/api/v1/repos/{repository}/runs", json={"inputs": {"name": "slow"}}).json()["id"]
    wait_for(lambda: replicas.run(run_id).status == "running" and replicas.run(run_id).claimed_by is not None,
             "a replica claiming the run")
    claimer = replicas.by_pid(int(str(replicas.run(run_id).claimed_by).split(":")[1]))
    survivor = replicas.b if claimer is replicas.a else replicas.a
    wait_for(lambda: [w["state"] for w in status(survivor, repository, token)["workers"]] == ["ready"],
             "the run reaching its worker")
    os.kill(claimer.process.pid, signal.SIGKILL)  # type: ignore[union-attr]
    claimer.process.wait(timeout=15)  # type: ignore[union-attr]
    try:
        wait_for(lambda: replicas.run(run_id).status == "failed", "the surviving replica failing the orphaned run")
        failed = http(survivor.url, token).get(f"/api/v1/repos/{repository}/runs/{run_id}").json()
        assert failed["error"] == ("the registry replica that was carrying out this run stopped before it finished; "
                                   "it was not retried, as the model may have run it already")
        assert [run["id"] for run in runs_of(survivor, repository, token)] == [run_id]  # not queued again
    finally:
        claimer.start()


@pytest.fixture
def context(tmp_path: Path) -> Iterator[RegistryContext]:
    """A replica's context in this process, on a database of the test's own, for its parts on their own."""
    settings = Settings(data_dir=tmp_path, secret_key="a key shared by every replica, long enough")
    engine = make_engine(settings.database_url)
    migrate(engine)
    try:
        yield RegistryContext(settings=settings, engine=engine, sessions=make_session_factory(engine),
                              store=FileBlobStore(tmp_path / "blobs"))
    finally:
        engine.dispose()


def test_a_collector_that_read_a_journal_page_before_another_recorded_it_records_nothing(
        context: RegistryContext, tmp_path: Path) -> None:
    """Two collectors (two replicas) read one worker's page at cursor 0; the first records it and moves the
    cursor on. The second, late, must neither record the runs again nor move the cursor back."""
    settings, sessions = context.settings, context.sessions
    digest = sha256(b"a version")
    with sessions() as db:
        repository = Repository(name="alice/journal", namespace="alice")
        db.add(repository)
        db.flush()
        deployment = Deployment(repository_id=repository.id, digest=digest)
        db.add(deployment)
        db.flush()
        worker = Worker(deployment_id=deployment.id, handle="w-1:0", endpoint=f"unix:{tmp_path}/w.sock")
        db.add(worker)
        db.commit()
        repository_id, worker_row = repository.id, worker.id
    tickets = RunTickets(settings.signing_key)
    page = [{"seq": seq, "status": "succeeded", "inputs": {"name": "x"}, "outputs": {"greeting": "y"},
             "duration_ms": 1.0, "finished_at": time.time(),
             "context": tickets.issue(RunTicket(run=str(uuid.uuid4()), repository_id=repository_id, digest=digest,
                                                source="api", caller=None, cold=False))}
            for seq in (1, 2)]
    first, late = (JournalReader(context, LocalRuntime(tmp_path / name, sandboxed=False)) for name in ("a", "b"))
    deadline = time.monotonic() + 30
    assert first._record(None, page, 0, repository_id, digest, worker_row, deadline)[:2] == (2, 2)  # type: ignore[arg-type]
    with sessions() as db:  # the first collector went on to later entries
        db.execute(update(Worker).where(Worker.id == worker_row).values(journal_cursor=5))
        db.commit()
    with pytest.raises(JournalTaken):
        late._record(None, page, 0, repository_id, digest, worker_row, deadline)  # type: ignore[arg-type]
    with sessions() as db:
        assert db.get(Worker, worker_row).journal_cursor == 5  # type: ignore[union-attr]
        assert db.scalar(select(func.count()).select_from(Run)) == 2
        assert db.get(Repository, repository_id).run_count == 2  # type: ignore[union-attr]


def test_places_held_for_workers_by_a_replica_that_died_lapse(context: RegistryContext, tmp_path: Path) -> None:
    """A replica killed between taking a place under ``scaling.max`` and recording its worker leaves the
    place taken; once it has been held longer than a start may take, the others may use it."""
    sessions = context.sessions
    deployments = Deployments(context, LocalRuntime(tmp_path / "runtime", sandboxed=False), wake_timeout=30)
    with sessions() as db:
        repository = Repository(name="alice/elastic", namespace="alice")
        db.add(repository)
        db.flush()
        deployment = Deployment(repository_id=repository.id, digest=sha256(b"a version"), state="running")
        db.add(deployment)
        db.commit()
        deployment_id = deployment.id
    assert deployments._reserve_worker(deployment_id, most=1, lapse=600)  # taken, and its replica dies
    assert not deployments._reserve_worker(deployment_id, most=1, lapse=600)
    with sessions() as db:
        db.execute(update(Deployment).where(Deployment.id == deployment_id).values(
            pending_since=datetime.now(UTC) - timedelta(seconds=601)))
        db.commit()
    assert deployments._reserve_worker(deployment_id, most=1, lapse=600)
    with sessions() as db:
        assert db.get(Deployment, deployment_id).pending_workers == 1  # type: ignore[union-attr]
