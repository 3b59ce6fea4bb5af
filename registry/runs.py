"""Run history: every prediction, whichever way it came, recorded with what the viewer may see.

Each prediction the gateway sends to a worker carries a :class:`RunTicket`, signed by the
registry: which run it is, who asked, for which version, and whether it woke the model. The
worker keeps a journal of its predictions, each with the ticket it came with, and serves it
over its own API (``GET /_internal/journal?after=N``, files by id). :class:`JournalReader`
reads it with a cursor, bounded and with timeouts, checks every entry against a schema and
its ticket, and records it in the ``runs`` table, files in the blob store. What the worker
says about a run is taken only where it is the worker's to say (inputs as the model read
them, outputs, error, duration); the rest comes from the ticket. A worker that answers
garbage, or nothing, costs only its own runs: the entries are refused, the reason is noted
on the worker, and the others are read on.

Async runs are rows first (``queued``) and are carried out by :class:`AsyncRunner`, which
also picks up queued runs left by a registry that stopped.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hashlib
import json
import logging
import ssl
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import httpx
from itsdangerous import BadSignature, Serializer
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from modelhall.adapters.runtimes.base import Runtime, WorkerHandle
from modelhall.adapters.storage import BlobStore
from modelhall.bounded import MAX_JSON_DEPTH, load_json
from modelhall.bundle.digests import digest_bytes
from modelhall.registry.context import RegistryContext
from modelhall.registry.catalog import count_runs
from modelhall.registry.db.models import Manifest, Repository, Run, RunFile, Worker, utcnow

logger = logging.getLogger(__name__)
LOG_LINES = 20
MAX_LOG_BYTES = 16 * 1024  # of a run's stored log tail: a single line of stdout may be megabytes
MAX_STORED_VALUE_BYTES = 64 * 1024  # an async run's input kept in the database; a larger one goes to the blob store
MAX_STORED_FILE = 64 * 1024 * 1024
MAX_JOURNAL_PAGE_BYTES = 8 * 1024 * 1024
MAX_ENTRY_VALUES_BYTES = 256 * 1024
MAX_ERROR_CHARACTERS = 4000
MAX_FILES_PER_RUN = 32
JOURNAL_PAGE = 200
KEPT_PROBLEMS = 8
WORKER_CALL_SECONDS = 5.0  # each call to a worker: connect, and between two chunks of its answer
WORKER_ROUND_SECONDS = 30.0  # all of one worker's calls in one collection
TICKET_MAX_AGE_SECONDS = 24 * 3600
INTERNAL_HEADERS = {"x-modelhall-internal": "1"}


@dataclass(frozen=True)
class RunTicket:
    """What the registry says about one prediction; the worker hands it back with the run, unread."""

    run: str
    repository_id: int
    digest: str
    source: str  # api|demo|async
    caller: str | None
    cold: bool
    at: float = field(default_factory=time.time)  # when the request came, in seconds (and their fractions)


class RunTickets:
    """Signs and checks :class:`RunTicket` s with the registry's key (shared by every replica)."""

    def __init__(self, signing_key: str):
        # Plain JSON and a signature: a header carries it as it is (ASCII), so the URL-safe
        # serializer's compression and base64, a cost on every prediction, buy nothing.
        self._serializer = Serializer(signing_key, salt="modelhall-run-ticket")

    def issue(self, ticket: RunTicket) -> str:
        return self._serializer.dumps(asdict(ticket))

    def check(self, signed: str) -> tuple[RunTicket, datetime]:
        """The ticket and when it was issued (when the request came); ``ValueError`` if forged or stale."""
        try:
            ticket = RunTicket(**self._serializer.loads(signed))
        except (BadSignature, TypeError) as error:
            raise ValueError("its run ticket is not one the registry issued") from error
        if not time.time() - TICKET_MAX_AGE_SECONDS < ticket.at <= time.time():
            raise ValueError("its run ticket has expired")
        return ticket, datetime.fromtimestamp(ticket.at, UTC)


class JournalFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    file: str = Field(pattern=r"^[0-9a-f]{32}$")
    name: str = Field(min_length=1, max_length=255, pattern=r"^[^/\\\x00]+$")
    size: int | None = Field(default=None, ge=0)


class JournalEntry(BaseModel):
    """One line of a worker's journal, as the registry accepts it."""

    model_config = ConfigDict(extra="ignore")
    seq: int = Field(ge=1)
    context: str = Field(max_length=4096)
    status: Literal["succeeded", "failed"]
    error: str | None = None
    inputs: dict[str, Any]
    outputs: dict[str, Any] | None
    duration_ms: float = Field(ge=0, le=7 * 24 * 3600 * 1000)
    finished_at: float


class JournalTaken(Exception):
    """Another collector (another replica) recorded these journal entries first."""


class JournalRefused(ValueError):
    """A worker's journal answer that the registry does not take (the reason is ours, never its text)."""


class JournalReader:
    """Reads each worker's journal from its cursor (kept with the worker in the database)."""

    def __init__(self, context: RegistryContext, runtime: Runtime):
        self.context = context
        self.runtime = runtime
        self.tickets = RunTickets(context.settings.signing_key)
        self._collecting: set[str] = set()  # workers being read now: one reader each, whoever asks
        self._collecting_lock = threading.Lock()

    def collect(self, worker: WorkerHandle, repository_id: int, digest: str) -> int:
        """Record the runs the worker journaled since the last call; returns how many were new.

        Never raises for what the worker does: a worker that is gone, slow, or answers
        garbage has the reason noted on its row, and the caller goes on with the next one. A worker
        already being read (by the reaper, or another listing) is skipped: a slow worker holds one
        registry thread at most, however many callers list its runs."""
        with self._collecting_lock:
            if worker.endpoint in self._collecting:
                return 0
            self._collecting.add(worker.endpoint)
        try:
            return self._collect(worker, repository_id, digest)
        finally:
            with self._collecting_lock:
                self._collecting.discard(worker.endpoint)

    def _collect(self, worker: WorkerHandle, repository_id: int, digest: str) -> int:
        with self.context.sessions() as db:
            row = db.scalar(select(Worker).where(Worker.handle == worker.id, Worker.endpoint == worker.endpoint))
            if row is None:
                return 0
            cursor, row_id = row.journal_cursor, row.id
        deadline = time.monotonic() + WORKER_ROUND_SECONDS
        added, problems = 0, []
        try:
            with worker_http(worker) as client:
                while time.monotonic() < deadline:
                    page = self._page(client, cursor, deadline)
                    if not page:
                        break
                    new, cursor, refused = self._record(client, page, cursor, repository_id, digest, row_id, deadline)
                    added += new
                    problems += refused
                    if len(page) < JOURNAL_PAGE:
                        break
        except (httpx.HTTPError, JournalRefused) as error:
            problems.append(_worker_problem(error))
        except JournalTaken:
            pass  # the other collector goes on from here
        if problems:
            self._note(worker, row_id, problems)
        return added

    def _note(self, worker: WorkerHandle, row_id: int, problems: list[str]) -> None:
        """Keep the newest distinct reasons for refusing this worker's journal on its row (and in the log)."""
        logger.warning("the journal of worker %s: %s", worker.id, "; ".join(problems[:KEPT_PROBLEMS]))
        with self.context.sessions() as db:
            row = db.get(Worker, row_id)
            assert row is not None
            earlier = row.journal_error.split("; ") if row.journal_error else []
            row.journal_error = "; ".join(list(dict.fromkeys([*earlier, *problems]))[-KEPT_PROBLEMS:])
            db.commit()

    @staticmethod
    def _page(client: httpx.Client, after: int, deadline: float) -> list[Any]:
        body = _bounded_get(client, "/_internal/journal", {"after": after, "limit": JOURNAL_PAGE},
                            MAX_JOURNAL_PAGE_BYTES, deadline)
        try:
            entries = load_json(body, MAX_JSON_DEPTH + 8)["entries"]  # an entry's values may be as deep as a request's
        except (ValueError, TypeError, KeyError) as error:
            raise JournalRefused("its journal is not the JSON the worker API defines") from error
        if not isinstance(entries, list):
            raise JournalRefused("its journal is not the JSON the worker API defines")
        return entries[:JOURNAL_PAGE]

    def _record(self, client: httpx.Client, page: list[Any], cursor: int, repository_id: int, digest: str,
                worker_row: int, deadline: float) -> tuple[int, int, list[str]]:
        """Record one page of entries; returns (runs added, the new cursor, why entries were refused).

        The page is recorded only if the worker's cursor still stands where it was read: of two
        collectors reading one worker at once (two replicas), one records the page and the other's
        transaction is rolled back, so no run is recorded or counted twice."""
        added, refused, start = 0, [], cursor
        logs = None
        with self.context.sessions() as db:
            for raw in page:
                try:
                    entry = JournalEntry.model_validate(raw)
                    if entry.seq <= cursor:
                        raise JournalRefused("entry numbers must grow")
                    ticket, issued = self._ticket(entry, repository_id, digest)
                except (ValidationError, JournalRefused, ValueError) as error:
                    refused.append(_entry_problem(raw, error))
                    cursor = max(cursor, raw.get("seq", cursor) if isinstance(raw, dict) and
                                 isinstance(raw.get("seq"), int) else cursor)
                    continue
                cursor = entry.seq
                if db.get(Run, ticket.run) is not None:
                    continue
                if logs is None:
                    logs = log_tail(self.runtime.logs(_handle_of(db, worker_row), LOG_LINES))
                stored: set[str] = set()
                files = _Files(client, self.context.store, stored, deadline)
                db.add(Run(
                    id=ticket.run, repository_id=repository_id, digest=digest, source=ticket.source,
                    caller=ticket.caller, status=entry.status, cold=ticket.cold,
                    error=None if entry.error is None else entry.error[:MAX_ERROR_CHARACTERS],
                    inputs=files.store_all(entry.inputs),
                    outputs=None if entry.outputs is None else files.store_all(entry.outputs),
                    duration_ms=entry.duration_ms, logs=logs, created_at=issued,
                    finished_at=_finished_at(entry.finished_at, issued),
                ))
                try:
                    db.flush()
                except IntegrityError:  # this run, recorded by another collector meanwhile
                    db.rollback()
                    raise JournalTaken() from None
                db.add_all(RunFile(run_id=ticket.run, digest=d) for d in stored)
                added += 1
            moved = db.execute(update(Worker).where(Worker.id == worker_row, Worker.journal_cursor == start)
                               .values(journal_cursor=cursor)).rowcount
            if not moved:  # another collector recorded this page first
                db.rollback()
                raise JournalTaken()
            count_runs(db, repository_id, added)
            try:
                db.commit()
            except IntegrityError:  # the same runs, recorded by another collector meanwhile
                db.rollback()
                raise JournalTaken() from None
        return added, cursor, refused

    def _ticket(self, entry: JournalEntry, repository_id: int, digest: str) -> tuple[RunTicket, datetime]:
        ticket, issued = self.tickets.check(entry.context)
        if (ticket.repository_id, ticket.digest) != (repository_id, digest):
            raise JournalRefused("its run ticket is for another version")
        size = len(json.dumps([entry.inputs, entry.outputs], default=str))
        if size > MAX_ENTRY_VALUES_BYTES:
            raise JournalRefused(f"its inputs and outputs take {size} bytes, over {MAX_ENTRY_VALUES_BYTES}")
        return ticket, issued


class _Files:
    """Moves the files an entry names (by the worker's ids) into the blob store, each fetched from
    the worker with a size cap; anything else in the values stays as the JSON it is."""

    def __init__(self, client: httpx.Client, store: BlobStore, stored: set[str], deadline: float):
        self.client, self.store, self.stored, self.deadline = client, store, stored, deadline
        self.asked = 0  # files asked of the worker for this run, whether they came or not

    def store_all(self, values: dict[str, Any]) -> dict[str, Any]:
        return {name: self._store(value) for name, value in values.items()}

    def _store(self, value: Any) -> Any:
        if not (isinstance(value, dict) and "file" in value):
            return value
        try:
            named = JournalFile.model_validate(value)
        except ValidationError:
            return {"missing": True, "reason": "the worker named a file in a way the registry does not take"}
        if self.asked >= MAX_FILES_PER_RUN:
            return {"name": named.name, "missing": True, "reason": f"a run keeps at most {MAX_FILES_PER_RUN} files"}
        self.asked += 1
        try:
            data = _bounded_get(self.client, f"/_internal/journal/files/{named.file}", None, MAX_STORED_FILE,
                                self.deadline)
        except (httpx.HTTPError, JournalRefused) as error:
            return {"name": named.name, "size": named.size, "missing": True, "reason": _worker_problem(error)}
        record = store_file(self.store, data, named.name)
        self.stored.add(record["digest"])
        return record


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One TLS context for every client to a worker: httpx would otherwise load the CA bundle
    for each (tens of milliseconds, every reaper round), although workers speak plain HTTP."""
    return ssl.create_default_context()


def worker_http(worker: WorkerHandle) -> httpx.Client:
    """A client for the registry's own calls to a worker (its journal): no redirects, no proxies
    from the environment, a timeout on every call."""
    socket = worker.unix_socket
    return httpx.Client(base_url="http://worker" if socket else worker.endpoint, headers=INTERNAL_HEADERS,
                        transport=httpx.HTTPTransport(uds=socket, verify=_tls_context()), trust_env=False,
                        follow_redirects=False, timeout=httpx.Timeout(WORKER_CALL_SECONDS))


def _bounded_get(client: httpx.Client, path: str, params: dict[str, Any] | None, limit: int, deadline: float) -> bytes:
    """A worker's answer, read up to ``limit`` bytes and until ``deadline``: a worker that sends
    more, or trickles, is cut off instead of holding the registry; once ``deadline`` has passed it
    is not asked at all, and no call waits past it."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise JournalRefused(f"it took longer than {WORKER_ROUND_SECONDS:g} s")
    timeout = httpx.Timeout(min(WORKER_CALL_SECONDS, remaining))
    with client.stream("GET", path, params=params, timeout=timeout) as response:
        if response.status_code != 200:
            raise JournalRefused(f"{path.split('/')[2]} answered {response.status_code}")
        chunks, size = [], 0
        for chunk in response.iter_raw():
            size += len(chunk)
            if size > limit:
                raise JournalRefused(f"its answer passed {limit} bytes")
            if time.monotonic() > deadline:
                raise JournalRefused(f"it took longer than {WORKER_ROUND_SECONDS:g} s")
            chunks.append(chunk)
        return b"".join(chunks)


def _finished_at(claimed: float, issued: datetime) -> datetime:
    """When the worker says the run ended, held between when the request came and now."""
    now = time.time()
    return datetime.fromtimestamp(min(max(claimed, issued.timestamp()), now), UTC)


def _handle_of(db: Session, worker_row: int) -> WorkerHandle:
    worker = db.get(Worker, worker_row)
    assert worker is not None
    return WorkerHandle(worker.handle, worker.endpoint)


def _worker_problem(error: Exception) -> str:
    if isinstance(error, JournalRefused):
        return str(error)
    return f"it did not answer ({type(error).__name__})"


def _entry_problem(raw: Any, error: Exception) -> str:
    seq = raw.get("seq") if isinstance(raw, dict) and isinstance(raw.get("seq"), int) else "?"
    if not isinstance(raw, dict):
        return "an entry refused: not a JSON object"
    if isinstance(error, ValidationError):
        fields = sorted({".".join(str(part) for part in problem["loc"]) for problem in error.errors()})
        return f"entry {seq} refused: {', '.join(fields[:5])} not as the schema says"
    return f"entry {seq} refused: {error}"


def log_tail(logs: str, limit: int = MAX_LOG_BYTES) -> str:
    """The end of ``logs``, at most ``limit`` bytes of UTF-8 (cut at a character, marked where it was cut)."""
    encoded = logs.encode()
    if len(encoded) <= limit:
        return logs
    return "…" + encoded[-(limit - len("…".encode())):].decode(errors="ignore")


def store_file(store: BlobStore, data: bytes, name: str) -> dict[str, Any]:
    digest = digest_bytes(data)
    if store.stat(digest) is None:
        store.put(digest, data)
    return {"digest": digest, "name": name, "size": len(data)}


def file_inputs_as_json(store: BlobStore, inputs: dict[str, Any], stored: set[str]) -> dict[str, Any]:
    """Stored inputs back into a predict request: the files the platform ``stored`` for the run as
    base64 again. Any other value, one that names a digest included, goes to the model as it is."""
    request = {}
    for name, value in inputs.items():
        if isinstance(value, dict) and value.get("digest") in stored and value.get("stored") == "json":
            value = json.loads(b"".join(store.read(value["digest"])))
        elif isinstance(value, dict) and value.get("digest") in stored:
            value = {"data": base64.b64encode(b"".join(store.read(value["digest"]))).decode(), "name": value["name"]}
        request[name] = value
    return request


def stored_outputs(store: BlobStore, outputs: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    """A predict response's outputs with base64 files moved into the blob store, and their digests."""
    kept, stored = {}, set()
    for name, value in outputs.items():
        if isinstance(value, dict) and {"data", "name", "mime_type"} <= set(value):
            data = _base64(value["data"])
            if data is not None and isinstance(value["name"], str) and isinstance(value["mime_type"], str):
                value = {**store_file(store, data, value["name"][:255]), "mime_type": value["mime_type"][:255]}
                stored.add(value["digest"])
        kept[name] = value
    return kept, stored


def _base64(data: Any) -> bytes | None:
    """``data`` decoded, or None if it is not base64 (a worker's answer, or a caller's request, may say anything)."""
    if not isinstance(data, str):
        return None
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None


def stored_inputs(store: BlobStore, inputs: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    """An async run's request inputs with base64 files, and any value larger than
    :data:`MAX_STORED_VALUE_BYTES` as JSON, moved into the blob store, and their digests."""
    kept, stored = {}, set()
    for name, value in inputs.items():
        data = _base64(value.get("data")) if isinstance(value, dict) else None
        if data is not None:
            file_name = value.get("name")
            value = store_file(store, data, file_name[:255] if isinstance(file_name, str) and file_name else name)
            stored.add(value["digest"])
        else:
            encoded = json.dumps(value).encode()
            if len(encoded) > MAX_STORED_VALUE_BYTES:
                value = {**store_file(store, encoded, f"{name}.json"), "stored": "json"}
                stored.add(value["digest"])
        kept[name] = value
    return kept, stored


def recorded_files(db: Session, run_id: str) -> set[str]:
    """The digests the platform stored for a run: the only files of it that may be served or replayed."""
    return set(db.scalars(select(RunFile.digest).where(RunFile.run_id == run_id)))


class AsyncRunner:
    """Carries out queued runs, oldest first; a run is claimed by one replica only, ``holder``, whose
    name it keeps: if that replica dies, the reaper fails the run (``Deployments.fail_orphaned_runs``)."""

    def __init__(self, context: RegistryContext, execute: Any, holder: str, poll_seconds: float = 0.5):
        self.context = context
        self.execute = execute  # async (run_id, repository, digest, spec, inputs, caller) -> (status, outputs, error)
        self.holder = holder
        self.poll_seconds = poll_seconds

    def _claim(self) -> Run | None:
        with self.context.sessions() as db:
            for run in db.scalars(select(Run).where(Run.status == "queued").order_by(Run.created_at).limit(8)):
                claimed = db.execute(update(Run).where(Run.id == run.id, Run.status == "queued")
                                     .values(status="running", claimed_by=self.holder)).rowcount
                db.commit()
                if claimed:
                    return run
        return None

    def _finish(self, run_id: str, status: str, outputs: dict[str, Any] | None, error: str | None,
                duration_ms: float | None) -> None:
        with self.context.sessions() as db:
            run = db.get(Run, run_id)
            assert run is not None
            if run.status != "running" or run.claimed_by != self.holder:
                return  # failed meanwhile as orphaned (this replica was taken for dead): that answer stands
            if outputs is not None and not isinstance(outputs, dict):
                status, outputs, error = "failed", None, "the model's answer has no outputs object"
            if not isinstance(duration_ms, (int, float)) or isinstance(duration_ms, bool):
                duration_ms = None
            run.status, run.error, run.duration_ms, run.finished_at = status, error, duration_ms, utcnow()
            if outputs is not None:
                run.outputs, stored = stored_outputs(self.context.store, outputs)
                db.add_all(RunFile(run_id=run_id, digest=d) for d in stored - recorded_files(db, run_id))
            db.commit()

    def _version(self, run: Run) -> tuple[Repository, dict[str, Any]]:
        with self.context.sessions() as db:
            repository = db.get(Repository, run.repository_id)
            manifest = db.scalar(select(Manifest).where(Manifest.repository_id == run.repository_id,
                                                        Manifest.digest == run.digest))
            assert repository is not None and manifest is not None
            return repository, manifest.spec or {}

    def _request(self, run: Run) -> dict[str, Any]:
        with self.context.sessions() as db:
            return file_inputs_as_json(self.context.store, run.inputs, recorded_files(db, run.id))

    async def run_forever(self) -> None:
        while True:
            run = await run_in_threadpool(self._claim)
            if run is None:
                await asyncio.sleep(self.poll_seconds)
                continue
            try:
                await self._carry_out(run)
            except Exception:  # noqa: BLE001 - one run (a model's odd answer) must not stop everyone's runs
                logger.exception("async run %s could not be carried out", run.id)
                try:
                    await run_in_threadpool(self._finish, run.id, "failed", None,
                                            "the run could not be carried out", None)
                except Exception:  # noqa: BLE001 - the database itself; the next run may fare better
                    logger.exception("async run %s could not be marked failed", run.id)

    async def _carry_out(self, run: Run) -> None:
        repository, spec = await run_in_threadpool(self._version, run)
        request = await run_in_threadpool(self._request, run)
        status, outputs, error, duration = await self.execute(run.id, repository, run.digest, spec, request,
                                                              run.caller)
        await run_in_threadpool(self._finish, run.id, status, outputs, error, duration)


def new_run_id() -> str:
    return str(uuid.uuid4())
