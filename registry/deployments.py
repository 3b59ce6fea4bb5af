"""Deployments: wake a version on its first request, put it to sleep when nobody uses it.

The registry decides *when*; the runtime (``adapters/runtimes``) does the work. What a
second replica or a restarted registry needs — build status, workers with their runtime id
and endpoint, each journal's cursor, last request — is in the database; this process only keeps locks and handles.

    sleeping ──request──▶ starting ──/healthz 200──▶ running ──idle timeout──▶ sleeping
                              │                       │    ▲
                              │             worker dies│    │restarted after 1, 2, 4 s
                              │                       ▼    │
                              │                    crashed ─┘  (a 4th crash in a row: failed)
                              └──exits or times out──▶ failed (with the worker's last log lines)

A request to a failed deployment tries once more (and resets the crash count).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import defaultdict
from contextlib import asynccontextmanager, contextmanager
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp
from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session
from yarl import URL
from starlette.concurrency import run_in_threadpool

from modelhall.adapters.runtimes.base import Build, Runtime, Target, UnschedulableError, WorkerHandle
from modelhall.bundle import UnpackLimits, unpack_layers
from modelhall.bundle.unpack import IteratorReader
from modelhall.registry.context import RegistryContext
from modelhall.registry.db.models import Deployment, Lease, Manifest, Repository, Run, Worker, utcnow
from modelhall.registry.leases import Leases
from modelhall.registry.metadata import insert_ignoring_duplicates
from modelhall.registry.runs import JournalReader
from modelhall.spec.model import Runtime as RuntimeSection, Scaling

logger = logging.getLogger(__name__)
SOCKET_POLL_SECONDS = 0.01  # until a starting pod's endpoint answers: every wait adds to the cold start
HEALTH_WAIT_SECONDS = 1.0  # how long one health request may wait for the model (then: is the worker still alive?)
LOG_LINES_ON_FAILURE = 20
MAX_RESTARTS = 3
RESTART_BACKOFF_SECONDS = (1.0, 2.0, 4.0)
DEFAULT_CALL_SECONDS = RuntimeSection.model_fields["timeout"].default
DEFAULT_STARTUP_SECONDS = RuntimeSection.model_fields["startup_timeout"].default
CALL_TIMEOUT_MARGIN_SECONDS = 10.0
REAPER_LEASE = "reaper"
START_POLL_SECONDS = 0.1  # how often a replica looks for the worker another replica is starting
LEASE_ROUNDS = 6  # a lease lasts this many reaper rounds past its last renewal (30 s by default)
MIN_LEASE_SECONDS = 10.0  # and never less: a busy replica must not pass for dead
ORPHANED_RUN = ("the registry replica that was carrying out this run stopped before it finished; "
                "it was not retried, as the model may have run it already")


WORKER_URL = "http://worker"


def worker_client(worker: WorkerHandle, timeout: float | None = None) -> aiohttp.ClientSession:
    """An HTTP client that talks to ``worker`` at its endpoint (a Unix socket, or a pod's address).

    aiohttp rather than httpx, which the rest of the platform uses: every prediction crosses
    this client, and aiohttp's C parser and thinner pool take half a millisecond less per
    request here (measured in ``bench/runtime_latency.py``, whose target is 5 ms in all).
    It keeps no cookies (a worker's cookie must not reach the next caller) and follows no
    redirects (the caller's browser does).
    """
    socket = worker.unix_socket
    connector = aiohttp.UnixConnector(path=socket) if socket else aiohttp.TCPConnector()
    origin, prefix = (WORKER_URL, "") if socket else _split_endpoint(worker.endpoint)
    return aiohttp.ClientSession(origin, connector=connector, middlewares=(_under(prefix),) if prefix else (),
                                 cookie_jar=aiohttp.DummyCookieJar(), skip_auto_headers=("User-Agent",),
                                 timeout=aiohttp.ClientTimeout(total=timeout, connect=10))


def _split_endpoint(endpoint: str) -> tuple[str, str]:
    """An HTTP endpoint's origin and its path (an OpenFaaS function's is ``/function/{name}.{namespace}``)."""
    url = URL(endpoint)
    return str(url.origin()), url.raw_path.rstrip("/")


def _under(prefix: str) -> aiohttp.ClientMiddlewareType:
    """Requests for ``/x`` go to ``{prefix}/x``, path and query kept as they were encoded."""

    async def middleware(request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType) -> aiohttp.ClientResponse:
        url = request.url
        request.url = URL.build(scheme=url.scheme, authority=url.raw_authority, path=prefix + url.raw_path,
                                query_string=url.raw_query_string, encoded=True)
        return await handler(request)

    return middleware


def _settled(task: asyncio.Task[Any]) -> None:
    """A start's failure is already in the database; mark it seen so asyncio does not warn."""
    if not task.cancelled():
        task.exception()


def handle_of(worker: Worker) -> WorkerHandle:
    return WorkerHandle(worker.handle, worker.endpoint)


class Overloaded(RuntimeError):
    """Every prediction slot is busy and the waiting line is full."""


class Pool:
    """The ready workers of one deployment, and the predictions each is answering.

    Each worker runs at most ``concurrency`` predictions; ``queue`` more may wait for a
    free slot, the rest are refused. A slot goes to the least busy worker. Kept in this
    process: it guards the workers this registry talks to.
    """

    def __init__(self, deployment_id: int, version: Version):
        self.deployment_id = deployment_id
        self.repository_id, self.digest = version.repository.id, version.digest
        self.scaling = version.scaling
        self.concurrency, self.queue = self.scaling.concurrency, self.scaling.queue
        self.workers: dict[str, WorkerHandle] = {}  # by runtime id
        self.busy: dict[str, int] = {}
        self.last_used: dict[str, float] = {}
        self.used: set[str] = set()  # workers that answered since the last round (written to the database)
        self._changed = asyncio.Condition()
        self._waiting = 0
        self.woken = False  # a worker started for a wake, and no prediction has been sent since

    @property
    def active(self) -> int:
        return sum(self.busy.values())

    @property
    def saturated(self) -> bool:
        """Every worker is answering all it may: one more request would wait."""
        return all(self.busy[worker] >= self.concurrency for worker in self.workers)

    @property
    def primary(self) -> WorkerHandle | None:
        """The oldest worker: the demo's (Gradio keeps each session's queue inside one process)."""
        return next(iter(self.workers.values()), None)

    def first_prediction_since_wake(self) -> bool:
        """True once after each wake, for the prediction that pays for it (a cold run), whichever request
        woke the model: for a demo, the page load wakes it and its first Run is the cold one."""
        woken, self.woken = self.woken, False
        return woken

    def _least_busy(self) -> WorkerHandle | None:
        free = [worker for worker in self.workers if self.busy[worker] < self.concurrency]
        return self.workers[min(free, key=lambda worker: self.busy[worker])] if free else None

    async def add(self, worker: WorkerHandle) -> None:
        async with self._changed:
            self.workers[worker.id] = worker
            self.busy.setdefault(worker.id, 0)
            self.last_used[worker.id] = time.monotonic()
            self._changed.notify_all()

    def discard(self, worker: WorkerHandle) -> None:
        """Forget a worker that stopped (its running predictions fail on their own)."""
        self.workers.pop(worker.id, None)
        self.last_used.pop(worker.id, None)
        self.used.discard(worker.id)

    def take_used(self) -> list[WorkerHandle]:
        """The workers that answered since the last call, or are answering now."""
        used = [worker for worker_id, worker in self.workers.items() if worker_id in self.used or self.busy[worker_id]]
        self.used = set()
        return used

    @asynccontextmanager
    async def slot(self, timeout: float) -> AsyncIterator[WorkerHandle]:
        """The least busy worker, held for one prediction; waits in line for one if all are busy."""
        async with self._changed:
            worker = self._least_busy()
            if worker is None:
                if self._waiting >= self.queue:
                    raise Overloaded("every prediction slot is busy and the queue is full")
                self._waiting += 1
                try:
                    await asyncio.wait_for(self._changed.wait_for(lambda: self._least_busy() is not None), timeout)
                except TimeoutError:
                    raise Overloaded(f"no prediction slot came free within {timeout:g} s") from None
                finally:
                    self._waiting -= 1
                worker = self._least_busy()
                assert worker is not None
            self.busy[worker.id] += 1
        try:
            yield worker
        finally:
            async with self._changed:
                self.busy[worker.id] -= 1
                if worker.id in self.workers:
                    self.last_used[worker.id] = time.monotonic()
                    self.used.add(worker.id)
                self._changed.notify()


class DeploymentFailed(RuntimeError):
    """The version could not be built or its worker did not become ready."""


class Unschedulable(DeploymentFailed):
    """The runtime has nowhere to run the version now (no GPU free)."""


class StillStarting(RuntimeError):
    """The caller asked not to wait, and the worker is not ready yet."""


@dataclass(frozen=True)
class Awake:
    """A deployment with at least one ready worker, and whether this request had to wake it (a cold start)."""

    pool: Pool
    cold: bool

    @property
    def deployment_id(self) -> int:
        return self.pool.deployment_id


@dataclass(frozen=True)
class Version:
    repository: Repository
    digest: str
    spec: dict[str, Any]

    @property
    def demo_path(self) -> str:
        """The one public prefix the worker's demo lives under: pinned to the version, naming no owner."""
        return f"/live/{self.repository.id}@{self.digest}"

    @property
    def scaling(self) -> Scaling:
        return Scaling.model_validate(self.spec.get("scaling", {}))

    @property
    def startup_timeout(self) -> float:
        """How long one of its workers may take to start (the spec's bound on loading the model)."""
        return float(self.spec.get("runtime", {}).get("startup_timeout", DEFAULT_STARTUP_SECONDS))

    @property
    def call_timeout(self) -> float:
        """How long the gateway waits for one prediction: the spec's limit, which the worker enforces
        itself, and a margin for the answer to arrive; a worker that ignores its limit is cut off here."""
        return float(self.spec.get("runtime", {}).get("timeout", DEFAULT_CALL_SECONDS)) + CALL_TIMEOUT_MARGIN_SECONDS


class Deployments:
    def __init__(self, context: RegistryContext, runtime: Runtime, wake_timeout: float):
        self.context = context
        self.runtime = runtime
        self.wake_timeout = wake_timeout
        self.round_seconds = context.settings.reaper_interval
        # This replica's leases: the reaper's (work done once), and one that says this replica is alive.
        self.leases = Leases(context.sessions, ttl=max(LEASE_ROUNDS * self.round_seconds, MIN_LEASE_SECONDS))
        self.alive_lease = "alive:" + hashlib.sha256(self.leases.holder.encode()).hexdigest()[:40]
        self.bundles = context.settings.data_dir.resolve() / "bundles"  # absolute: the sandbox binds it
        self._locks: defaultdict[int, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._starting: dict[int, asyncio.Task[None]] = {}
        self._growing: set[int] = set()  # deployments starting one more worker
        # The hot path: ready workers by version, valid only while they live; the database stays the record.
        self._pools: dict[tuple[int, str], Pool] = {}
        # When each deployment last had a request, written to the database by the reaper: a write
        # on the request path cost an idle registry about 1.5 ms of each prediction.
        self._requested: dict[int, datetime] = {}
        self.journals = JournalReader(context, runtime)

    # --- the database side -------------------------------------------------------------

    def _deployment(self, version: Version) -> int:
        """The version's deployment; the first request creates it (of several at once, one does)."""
        with self.context.sessions() as db:
            insert_ignoring_duplicates(db, Deployment, {"repository_id": version.repository.id,
                                                        "digest": version.digest})
            found = db.scalars(select(Deployment).where(Deployment.repository_id == version.repository.id,
                                                        Deployment.digest == version.digest)).one()
            found.last_request_at = utcnow()
            db.commit()
            return found.id

    def _update(self, deployment_id: int, **values: Any) -> None:
        with self.context.sessions() as db:
            deployment = db.get(Deployment, deployment_id)
            assert deployment is not None
            for key, value in values.items():
                setattr(deployment, key, value)
            db.commit()

    def _live_workers(self, deployment_id: int) -> list[WorkerHandle]:
        live = []
        with self.context.sessions() as db:
            for worker in db.scalars(select(Worker).where(Worker.deployment_id == deployment_id,
                                                          Worker.state == "ready").order_by(Worker.id)):
                handle = handle_of(worker)
                if self.runtime.alive(handle):
                    live.append(handle)
                else:
                    worker.state, worker.stopped_at = "crashed", utcnow()
            db.commit()
        return live

    def _pool(self, version: Version, deployment_id: int) -> Pool:
        key = (version.repository.id, version.digest)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = Pool(deployment_id, version)
        return pool

    def _drop_dead(self, pool: Pool) -> None:
        for worker in list(pool.workers.values()):
            if not self.runtime.alive(worker):
                pool.discard(worker)

    async def _adopt_live(self, pool: Pool) -> None:
        """Workers the database knows as ready (started before a restart, say) join the pool."""
        for worker in await run_in_threadpool(self._live_workers, pool.deployment_id):
            if worker.id not in pool.workers:
                await pool.add(worker)

    def _record_worker(self, deployment_id: int, handle: WorkerHandle, state: str, reserved: bool = False) -> None:
        """Record ``handle``'s state; a ``reserved`` worker's row takes the place :meth:`_reserve_worker`
        held for it, in the same transaction, so that it is counted once, and always."""
        with self.context.sessions() as db:
            if reserved:
                self._release_reservation(db, deployment_id)
            worker = db.scalar(select(Worker).where(Worker.deployment_id == deployment_id, Worker.handle == handle.id,
                                                    Worker.endpoint == handle.endpoint))
            if worker is None:
                worker = Worker(deployment_id=deployment_id, handle=handle.id, endpoint=handle.endpoint)
                db.add(worker)
            worker.state = state
            if state in ("stopped", "crashed"):
                worker.stopped_at = utcnow()
            db.commit()

    # --- materialising and building ----------------------------------------------------

    def _bundle_dir(self, digest: str) -> Path:
        """The version unpacked from the blob store, once; later calls reuse it."""
        target = self.bundles / digest.replace(":", "-")
        if target.exists():
            return target
        store = self.context.store
        manifest = json.loads(b"".join(store.read(digest)))

        @contextmanager
        def open_blob(blob: str) -> Iterator[BinaryIO]:
            yield IteratorReader(store.read(blob))  # type: ignore[misc]

        try:
            unpack_layers(manifest, open_blob, target, UnpackLimits.from_settings(self.context.settings))
        except FileExistsError:  # unpacked by a concurrent request meanwhile
            pass
        return target

    def _build(self, deployment_id: int, target: Target) -> tuple[Path, Build]:
        self._update(deployment_id, build_status="building")
        try:
            bundle = self._bundle_dir(target.digest)
            build = self.runtime.build(bundle, target)
        except Exception as error:  # unpacking, a bad requirements file, the installer failing
            self._update(deployment_id, build_status="failed", build_error=str(error), state="failed",
                         state_detail=f"build failed: {error}")
            raise DeploymentFailed(f"build failed: {error}") from error
        self._update(deployment_id, build_status="ready", build_error=None, environment=build.environment)
        return bundle, build

    # --- waking and sleeping --------------------------------------------------------------

    async def wake(self, version: Version, wait: bool = True) -> Awake:
        """The version's pool with a ready worker in it, started if none runs.

        With ``wait=False`` a sleeping deployment is started in the background and
        :class:`StillStarting` raised at once, for callers that poll.
        """
        pool = self._pools.get((version.repository.id, version.digest))
        if pool is not None:
            self._drop_dead(pool)
            if pool.workers:
                self.touch(pool.deployment_id)
                return Awake(pool, cold=False)
        deployment_id = await run_in_threadpool(self._deployment, version)
        pool = self._pool(version, deployment_id)
        await self._adopt_live(pool)
        if pool.workers:
            return Awake(pool, cold=False)
        async with self._locks[deployment_id]:
            task = self._starting.get(deployment_id)
            if task is None or task.done():
                await self._adopt_live(pool)
                if pool.workers:
                    return Awake(pool, cold=False)
                task = asyncio.create_task(self._start_once(deployment_id, version, restarts=0))
                task.add_done_callback(_settled)
                self._starting[deployment_id] = task
        if not wait:
            raise StillStarting(f"{version.repository.name} is starting")
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout=self.wake_timeout)
        except TimeoutError:
            raise StillStarting(f"{version.repository.name} is still starting after {self.wake_timeout:g} s") from None
        return Awake(pool, cold=True)

    def touch(self, deployment_id: int) -> None:
        """A request came or went: the idle time starts again (recorded in the database by the next reaper round)."""
        self._requested[deployment_id] = utcnow()

    def last_request(self, deployment: Deployment) -> datetime | None:
        """When ``deployment`` last had a request, counting those the reaper has not recorded yet."""
        return self._requested.get(deployment.id, deployment.last_request_at)

    def _record_requests(self, db: Session) -> None:
        """Write the request times :meth:`touch` noted since the last round (none over a later one).

        A deployment answering a prediction here now counts as requested now: the replica that puts
        deployments to sleep sees only the database, not this replica's predictions in flight."""
        noted, self._requested = self._requested, {}
        now = utcnow()
        for pool in self._pools.values():
            if pool.active:
                noted[pool.deployment_id] = now
        for deployment_id, at in noted.items():
            db.execute(update(Deployment).where(Deployment.id == deployment_id, or_(
                Deployment.last_request_at.is_(None), Deployment.last_request_at < at)).values(last_request_at=at))
        for pool in self._pools.values():
            for worker in pool.take_used():
                db.execute(update(Worker).where(
                    Worker.deployment_id == pool.deployment_id, Worker.handle == worker.id,
                    Worker.endpoint == worker.endpoint).values(last_used_at=now))

    @asynccontextmanager
    async def slot(self, version: Version, awake: Awake) -> AsyncIterator[WorkerHandle]:
        """A worker for one prediction; when every worker is busy and ``scaling.max`` allows, one more starts."""
        pool = awake.pool
        if pool.saturated and len(pool.workers) < pool.scaling.max and pool.deployment_id not in self._growing:
            self._growing.add(pool.deployment_id)
            task = asyncio.create_task(self._add_worker(pool, version))
            task.add_done_callback(_settled)
        async with pool.slot(self.wake_timeout) as worker:
            yield worker

    def collect_runs(self, repository_id: int | None = None) -> int:
        """Copy new journal lines of running workers (of one repository, or all) into the run history.

        The reaper does this every round; reading the run history does it first for its repository.
        """
        added = 0
        with self.context.sessions() as db:
            query = select(Worker, Deployment).join(Deployment, Deployment.id == Worker.deployment_id).where(
                Worker.state.in_(("starting", "ready")))
            if repository_id is not None:
                query = query.where(Deployment.repository_id == repository_id)
            rows = [(handle_of(worker), deployment.repository_id, deployment.digest)
                    for worker, deployment in db.execute(query)]
        for handle, repository_id, digest in rows:
            added += self._collect(handle, repository_id, digest)
        return added

    def _collect(self, worker: WorkerHandle, repository_id: int, digest: str) -> int:
        """One worker's new runs; whatever goes wrong with it is logged and costs only its own runs."""
        try:
            return self.journals.collect(worker, repository_id, digest)
        except Exception:  # noqa: BLE001 - the next worker, and the reaper's round, must go on
            logger.exception("the runs of worker %s could not be collected", worker.id)
            return 0

    async def _launch(self, deployment_id: int, version: Version, reserved: bool = False) -> WorkerHandle:
        """Build if needed, start one worker and wait until it is ready; it joins the version's pool.
        A ``reserved`` worker (see :meth:`_reserve_worker`) gives its place back if it never starts."""
        try:
            target = Target(version.repository.id, version.repository.name, version.digest)
            bundle, build = await run_in_threadpool(self._build, deployment_id, target)
            handle = await run_in_threadpool(self.runtime.start, bundle, build, target, version.demo_path)
        except BaseException:
            if reserved:
                await run_in_threadpool(self._give_back_reservation, deployment_id)
            raise
        await run_in_threadpool(self._record_worker, deployment_id, handle, "starting", reserved)
        try:
            await self._wait_ready(handle)
        except DeploymentFailed:
            await run_in_threadpool(self.runtime.stop, handle)
            await run_in_threadpool(self._record_worker, deployment_id, handle, "crashed")
            raise
        await run_in_threadpool(self._record_worker, deployment_id, handle, "ready")
        await self._pool(version, deployment_id).add(handle)
        return handle

    async def _start(self, deployment_id: int, version: Version, restarts: int) -> WorkerHandle:
        """Wake a sleeping (or crashed) deployment: its first worker, then up to ``scaling.min`` in the background."""
        await run_in_threadpool(self._update, deployment_id, state="starting", state_detail=None, desired_replicas=1,
                                restarts=restarts)
        try:
            handle = await self._launch(deployment_id, version)
        except UnschedulableError as error:
            await run_in_threadpool(self._update, deployment_id, state="unschedulable", state_detail=str(error),
                                    desired_replicas=0)
            raise Unschedulable(str(error)) from error
        except DeploymentFailed as error:
            await run_in_threadpool(self._update, deployment_id, state="failed", state_detail=str(error),
                                    desired_replicas=0)
            raise
        # idle time counts from when the model could first answer, not from the request that woke it
        await run_in_threadpool(self._update, deployment_id, state="running", last_request_at=utcnow())
        pool = self._pool(version, deployment_id)
        pool.woken = True
        for _ in range(version.scaling.min - 1):
            task = asyncio.create_task(self._add_worker(pool, version))
            task.add_done_callback(_settled)
        return handle

    async def _add_worker(self, pool: Pool, version: Version) -> None:
        """Scale out by one worker, if every replica's workers together leave room under ``scaling.max``;
        otherwise serve through the workers the other replicas started. A failure leaves the deployment
        as it was: its other workers serve."""
        try:
            if await run_in_threadpool(self._reserve_worker, pool.deployment_id, pool.scaling.max,
                                       version.startup_timeout + self.round_seconds):
                await self._launch(pool.deployment_id, version, reserved=True)
            else:
                await self._adopt_live(pool)
        except (DeploymentFailed, UnschedulableError) as error:
            logger.warning("an extra worker for %s did not start: %s", version.repository.name, error)
        finally:
            self._growing.discard(pool.deployment_id)
            await run_in_threadpool(self._count_desired, pool.deployment_id)

    def _reserve_worker(self, deployment_id: int, most: int, lapse: float) -> bool:
        """Hold a place for one more worker if the deployment's workers, on every replica, and the places
        already held number fewer than ``most``. The deployment's row is locked while counting
        (PostgreSQL; SQLite writes one at a time), so two replicas never both take the last place.
        Places held for ``lapse`` seconds (longer than a start may take) were a dead replica's: they go."""
        with self.context.sessions() as db:
            deployment = db.scalars(select(Deployment).where(Deployment.id == deployment_id).with_for_update()).one()
            running = db.scalar(select(func.count()).select_from(Worker).where(
                Worker.deployment_id == deployment_id, Worker.state.in_(("starting", "ready")))) or 0
            if deployment.pending_since and utcnow() - deployment.pending_since > timedelta(seconds=lapse):
                deployment.pending_workers = 0
            if running + deployment.pending_workers >= most:
                return False
            deployment.pending_workers += 1
            deployment.pending_since = utcnow()
            deployment.desired_replicas = running + deployment.pending_workers
            db.commit()
            return True

    @staticmethod
    def _release_reservation(db: Session, deployment_id: int) -> None:
        db.execute(update(Deployment).where(Deployment.id == deployment_id, Deployment.pending_workers > 0)
                   .values(pending_workers=Deployment.pending_workers - 1))

    def _give_back_reservation(self, deployment_id: int) -> None:
        with self.context.sessions() as db:
            self._release_reservation(db, deployment_id)
            db.commit()

    def _count_desired(self, deployment_id: int) -> None:
        """``desired_replicas``: the deployment's workers on every replica, and those being started."""
        with self.context.sessions() as db:
            running = select(func.count()).select_from(Worker).where(
                Worker.deployment_id == deployment_id, Worker.state.in_(("starting", "ready"))).scalar_subquery()
            db.execute(update(Deployment).where(Deployment.id == deployment_id, Deployment.state == "running")
                       .values(desired_replicas=running + Deployment.pending_workers))
            db.commit()

    async def _wait_ready(self, handle: WorkerHandle) -> None:
        """Until the worker's model has loaded: one ``/healthz?wait`` at a time answers the moment the model
        is ready. (A local worker's socket listens before the worker starts: the first call waits for it.)"""
        async with worker_client(handle, timeout=HEALTH_WAIT_SECONDS + 5) as client:
            while True:
                if not self.runtime.alive(handle):
                    raise DeploymentFailed(f"the model server exited while starting:\n"
                                           f"{self.runtime.logs(handle, LOG_LINES_ON_FAILURE)}")
                try:
                    async with client.get("/healthz", params={"wait": HEALTH_WAIT_SECONDS}) as response:
                        if response.status == 200:
                            return
                        health = await response.json(content_type=None)
                    if isinstance(health, dict) and health.get("status") == "failed":
                        raise DeploymentFailed(f"the model failed to load: {str(health.get('error'))[:2000]}")
                    continue  # still loading: ask again (after checking it is alive)
                except (aiohttp.ClientError, TimeoutError, ValueError):  # not listening yet, or it died meanwhile
                    pass
                await asyncio.sleep(SOCKET_POLL_SECONDS)

    async def shrink_idle(self) -> None:
        """Forget workers that ended; stop extra ones (beyond the oldest and ``scaling.min``) that answered
        nothing for the idle timeout, here or through any other replica."""
        now = time.monotonic()
        for pool in list(self._pools.values()):
            self._drop_dead(pool)  # also reaps a worker this replica started and another one stopped
            keep = max(1, pool.scaling.min)
            for worker_id, worker in list(pool.workers.items())[keep:]:
                if pool.busy[worker_id] == 0 and now - pool.last_used[worker_id] > pool.scaling.idle_timeout \
                        and await run_in_threadpool(self._idle_everywhere, pool, worker):
                    pool.discard(worker)
                    await run_in_threadpool(self._retire, pool, worker)

    def _idle_everywhere(self, pool: Pool, worker: WorkerHandle) -> bool:
        """Whether no replica sent ``worker`` a prediction for its idle timeout: their uses reach the
        database once a round, so one round more is allowed, as for putting a deployment to sleep."""
        quiet = timedelta(seconds=pool.scaling.idle_timeout + self.round_seconds)
        with self.context.sessions() as db:
            row = db.scalar(select(Worker).where(Worker.deployment_id == pool.deployment_id, Worker.handle == worker.id,
                                                 Worker.endpoint == worker.endpoint))
        return row is not None and utcnow() - (row.last_used_at or row.started_at) > quiet

    def _retire(self, pool: Pool, worker: WorkerHandle) -> None:
        if self._claim_stop(pool.deployment_id, [worker]):
            self._collect(worker, pool.repository_id, pool.digest)
            self.runtime.stop(worker)
        self._count_desired(pool.deployment_id)

    def _claim_stop(self, deployment_id: int, workers: list[WorkerHandle]) -> list[WorkerHandle]:
        """Mark ``workers`` stopped in the database, each only if it was still running; returns those
        this call marked, the only ones it may stop: of two replicas, one stops a worker, once."""
        claimed = []
        with self.context.sessions() as db:
            for worker in workers:
                if db.execute(update(Worker).where(
                        Worker.deployment_id == deployment_id, Worker.handle == worker.id,
                        Worker.endpoint == worker.endpoint, Worker.state.in_(("starting", "ready")),
                ).values(state="stopped", stopped_at=utcnow())).rowcount:
                    claimed.append(worker)
            db.commit()
        return claimed

    def sleep_idle(self, now: datetime | None = None) -> list[str]:
        """Stop the workers of deployments idle past their timeout; returns their digests.

        Their last runs are read first, with no transaction open: a slow worker must not hold
        the database (SQLite's write lock) while the registry waits for it."""
        idle = self._idle(now or datetime.now(UTC))
        for deployment_id, repository_id, digest, workers in idle:
            with self.context.sessions() as db:
                db.execute(update(Deployment).where(Deployment.id == deployment_id, Deployment.state == "running")
                           .values(state="sleeping", desired_replicas=0, pending_workers=0))
                db.commit()
            claimed = self._claim_stop(deployment_id, workers)
            pool = self._pools.get((repository_id, digest))
            for handle in claimed if pool else ():  # a request from now on wakes a new worker, not this one
                pool.discard(handle)
            for handle in claimed:
                self._collect(handle, repository_id, digest)
                self.runtime.stop(handle)
        return [digest for _, _, digest, _ in idle]

    def _idle(self, now: datetime) -> list[tuple[int, int, str, list[WorkerHandle]]]:
        """Running deployments idle past their timeout: (id, repository id, digest, their workers)."""
        idle = []
        with self.context.sessions() as db:
            self._record_requests(db)
            db.commit()
            for deployment in db.scalars(select(Deployment).where(Deployment.state == "running")).all():
                version = Version(db.get(Repository, deployment.repository_id), deployment.digest,
                                  self._spec_of(db, deployment))
                last = deployment.last_request_at or now
                pool = self._pools.get((deployment.repository_id, deployment.digest))
                busy = pool is not None and pool.active > 0
                # another replica's requests reach the database once a round: allow it one round more
                quiet = timedelta(seconds=version.scaling.idle_timeout + self.round_seconds)
                if busy or version.scaling.min > 0 or now - last < quiet:
                    continue
                workers = [handle_of(w) for w in db.scalars(select(Worker).where(
                    Worker.deployment_id == deployment.id, Worker.state.in_(("starting", "ready"))))]
                idle.append((deployment.id, deployment.repository_id, deployment.digest, workers))
        return idle

    @staticmethod
    def _spec_of(db: Session, deployment: Deployment) -> dict[str, Any]:
        manifest = db.scalar(select(Manifest).where(Manifest.repository_id == deployment.repository_id,
                                                    Manifest.digest == deployment.digest))
        return (manifest.spec if manifest else None) or {}

    def recover(self) -> None:
        """After a restart: keep the workers still alive, forget the others."""
        with self.context.sessions() as db:
            for worker in db.scalars(select(Worker).where(Worker.state.in_(("starting", "ready")))):
                if not self.runtime.alive(handle_of(worker)):
                    worker.state, worker.stopped_at = "crashed", utcnow()
            for deployment in db.scalars(select(Deployment).where(Deployment.state.in_(("starting", "running",
                                                                                         "crashed")))):
                alive = db.scalar(select(Worker).where(Worker.deployment_id == deployment.id, Worker.state == "ready"))
                if alive is None:
                    deployment.state, deployment.desired_replicas, deployment.pending_workers = "sleeping", 0, 0
            db.commit()

    def stop_all(self) -> None:
        """On shutdown: stop every worker, unless another replica is alive to serve them (and put them
        to sleep when idle); then only this replica's leases go."""
        self.collect_runs()
        with self.context.sessions() as db:
            self._record_requests(db)
            db.commit()
        others = self._other_replicas()
        self.leases.release(REAPER_LEASE)
        self.leases.release(self.alive_lease)
        if others:
            return
        with self.context.sessions() as db:
            for worker in db.scalars(select(Worker).where(Worker.state.in_(("starting", "ready")))):
                self.runtime.stop(handle_of(worker))
                worker.state, worker.stopped_at = "stopped", utcnow()
            for deployment in db.scalars(select(Deployment).where(Deployment.state.in_(("starting", "running")))):
                deployment.state, deployment.desired_replicas, deployment.pending_workers = "sleeping", 0, 0
            db.commit()

    def _other_replicas(self) -> int:
        """How many other replicas renewed their alive lease in the last few rounds (a live one renews
        it every round; one that died a moment ago, this process's predecessor say, has stopped)."""
        recent = utcnow() + self.leases.ttl - timedelta(seconds=3 * self.round_seconds)
        with self.context.sessions() as db:
            return len(db.scalars(select(Lease.name).where(Lease.name.startswith("alive:"),
                                                           Lease.name != self.alive_lease,
                                                           Lease.expires_at > recent)).all())

    def retire_deleted(self) -> int:
        """Deployments of versions whose manifest was deleted: their workers stop (their last runs read
        first), the runtime removes what it kept for them, and the deployment's row goes."""
        with self.context.sessions() as db:
            manifest = select(Manifest.id).where(Manifest.repository_id == Deployment.repository_id,
                                                 Manifest.digest == Deployment.digest)
            gone = [(deployment.id, Target(repository.id, repository.name, deployment.digest))
                    for deployment, repository in db.execute(
                        select(Deployment, Repository).join(Repository, Repository.id == Deployment.repository_id)
                        .where(~manifest.exists()))]
        for deployment_id, target in gone:
            with self.context.sessions() as db:
                workers = [handle_of(w) for w in db.scalars(select(Worker).where(
                    Worker.deployment_id == deployment_id, Worker.state.in_(("starting", "ready"))))]
            pool = self._pools.pop((target.repository_id, target.digest), None)
            for handle in self._claim_stop(deployment_id, workers):
                if pool:
                    pool.discard(handle)
                self._collect(handle, target.repository_id, target.digest)
                self.runtime.stop(handle)
            self.runtime.remove(target)
            with self.context.sessions() as db:
                db.execute(delete(Deployment).where(Deployment.id == deployment_id))
                db.commit()
        return len(gone)

    def fail_orphaned_runs(self) -> int:
        """Async runs left ``running`` by a replica that died (its alive lease expired) are failed, with
        the reason; a run is never lost, nor carried out a second time without anyone knowing."""
        with self.context.sessions() as db:
            alive = select(Lease.holder).where(Lease.name.startswith("alive:"), Lease.expires_at > utcnow())
            failed = db.execute(update(Run).where(
                Run.status == "running", Run.claimed_by.is_not(None), Run.claimed_by.not_in(alive),
            ).values(status="failed", error=ORPHANED_RUN, finished_at=utcnow())).rowcount
            db.commit()
        return failed

    def _crashed(self) -> list[tuple[int, Version, int, str]]:
        """Running deployments whose every worker died: (deployment, version, restarts so far, last log lines).

        A dead worker beside live ones is only recorded as crashed."""
        found = []
        with self.context.sessions() as db:
            for deployment in db.scalars(select(Deployment).where(Deployment.state == "running")):
                workers = db.scalars(select(Worker).where(Worker.deployment_id == deployment.id,
                                                          Worker.state == "ready")).all()
                dead = [w for w in workers if not self.runtime.alive(handle_of(w))]
                if not dead:
                    continue
                log = self.runtime.logs(handle_of(dead[-1]), LOG_LINES_ON_FAILURE)
                for worker in dead:
                    self._collect(handle_of(worker), deployment.repository_id, deployment.digest)
                    self.runtime.stop(handle_of(worker))
                    worker.state, worker.stopped_at = "crashed", utcnow()
                if len(dead) < len(workers):  # the others serve on; more start again under load
                    continue
                repository = db.get(Repository, deployment.repository_id)
                assert repository is not None
                version = Version(repository, deployment.digest, self._spec_of(db, deployment))
                deployment.state = "crashed"
                found.append((deployment.id, version, deployment.restarts, log))
            db.commit()
        return found

    async def restart_crashed(self) -> None:
        """Restart workers that died, waiting longer each time; after MAX_RESTARTS in a row, give up."""
        for deployment_id, version, restarts, log in await run_in_threadpool(self._crashed):
            if restarts >= MAX_RESTARTS:
                await run_in_threadpool(self._update, deployment_id, state="failed", desired_replicas=0,
                                        state_detail=f"the worker crashed {restarts + 1} times in a row; "
                                                     f"its last output:\n{log}")
                continue
            delay = RESTART_BACKOFF_SECONDS[min(restarts, len(RESTART_BACKOFF_SECONDS) - 1)]
            task = asyncio.create_task(self._restart(deployment_id, version, restarts + 1, delay))
            task.add_done_callback(_settled)
            self._starting[deployment_id] = task

    async def _restart(self, deployment_id: int, version: Version, restarts: int, delay: float) -> None:
        await asyncio.sleep(delay)
        await self._start_once(deployment_id, version, restarts=restarts)

    async def _start_once(self, deployment_id: int, version: Version, restarts: int) -> None:
        """Start the deployment here, or wait for the worker another replica is starting: the replica
        holding the deployment's start lease starts it; the others adopt its worker once it is ready
        (or take the lease over, and start it themselves, if that replica fails or dies)."""
        lease, pool = f"start:{deployment_id}", self._pool(version, deployment_id)
        deadline = time.monotonic() + self.wake_timeout
        while True:
            if await run_in_threadpool(self.leases.hold, lease):
                async with self._renewing(lease):
                    self._drop_dead(pool)  # a crashed worker is still in the pool when a restart comes here
                    await self._adopt_live(pool)
                    if not pool.workers:  # not started by the replica that held the lease before
                        await self._start(deployment_id, version, restarts=restarts)
                return
            await asyncio.sleep(START_POLL_SECONDS)
            await self._adopt_live(pool)
            if pool.workers:
                return
            if time.monotonic() > deadline:
                raise StillStarting(f"{version.repository.name} is still starting on another replica")

    @asynccontextmanager
    async def _renewing(self, lease: str) -> AsyncIterator[None]:
        """Hold ``lease`` while the block runs (renewed every round), and give it up after."""
        async def renew() -> None:
            while True:
                await asyncio.sleep(self.round_seconds)
                await run_in_threadpool(self.leases.hold, lease)

        renewal = asyncio.create_task(renew())
        try:
            yield
        finally:
            renewal.cancel()
            await run_in_threadpool(self.leases.release, lease)

    async def keep_alive(self) -> None:
        """Say this replica is alive, every round, forever: apart from the reaper, whose round may
        take long (a slow worker's journal), so that a busy replica is never taken for dead."""
        while True:
            try:
                await run_in_threadpool(self.leases.hold, self.alive_lease)
            except Exception:  # noqa: BLE001 - the database may be back next round
                logger.exception("this replica's alive lease could not be renewed")
            await asyncio.sleep(self.round_seconds)

    def _round_start(self) -> bool:
        """Each round, on every replica: record its requests; whether it holds the reaper's lease,
        and so does the work that must happen once."""
        with self.context.sessions() as db:
            self._record_requests(db)
            db.commit()
        return self.leases.hold(REAPER_LEASE)

    async def run_reaper(self, every: float) -> None:
        """Collect runs, restart crashed workers, put idle deployments to sleep, retire deleted versions'
        deployments, fail the async runs of replicas that died; forever, on the replica holding the
        reaper's lease. Every replica shrinks its own pools (a worker is stopped by one replica only:
        :meth:`_claim_stop`).

        One failing round is logged and the next one runs: a dead reaper would leave
        every model awake.
        """
        while True:
            await asyncio.sleep(every)
            try:
                if await run_in_threadpool(self._round_start):
                    await run_in_threadpool(self.collect_runs)
                    await self.restart_crashed()
                    await run_in_threadpool(self.sleep_idle)
                    await run_in_threadpool(self.retire_deleted)
                    await run_in_threadpool(self.fail_orphaned_runs)
                await self.shrink_idle()
            except Exception:  # noqa: BLE001 - logged, and the loop must go on
                logger.exception("the deployment reaper's round failed")

