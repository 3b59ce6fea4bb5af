"""Run history: every prediction, whichever way it came, recorded with what the viewer may see.

Workers write one JSON line per prediction to their run journal; :func:`collect` copies
new lines into the ``runs`` table (small values inline, files into the blob store by
digest), once per run id. Async runs are rows first (``queued``) and are carried out by
:class:`AsyncRunner`, which also picks up queued runs left by a registry that stopped.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from starlette.concurrency import run_in_threadpool

from modelhall.adapters.runtimes.base import Runtime, WorkerHandle
from modelhall.adapters.storage import BlobStore
from modelhall.bundle.digests import digest_bytes
from modelhall.registry.context import RegistryContext
from modelhall.registry.catalog import count_runs
from modelhall.registry.db.models import Manifest, Repository, Run, utcnow

LOG_LINES = 20
MAX_STORED_FILE = 64 * 1024 * 1024


def store_file(store: BlobStore, data: bytes, name: str) -> dict[str, Any]:
    digest = digest_bytes(data)
    if store.stat(digest) is None:
        store.put(digest, data)
    return {"digest": digest, "name": name, "size": len(data)}


class JournalReader:
    """Reads each worker's journal from where it stopped last time (from the start after a restart)."""

    def __init__(self, context: RegistryContext, runtime: Runtime):
        self.context = context
        self.runtime = runtime
        self._offsets: dict[str, int] = {}

    def collect(self, worker: WorkerHandle, repository_id: int, digest: str) -> int:
        """Record the runs the worker journaled since the last call; returns how many were new."""
        journal = self.runtime.journal(worker)
        if not journal.exists():
            return 0
        offset = self._offsets.get(str(journal), 0)
        with journal.open("rb") as lines:
            lines.seek(offset)
            chunk = lines.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written waits for the next call
        self._offsets[str(journal)] = offset + len(complete)
        entries = [json.loads(line) for line in complete.splitlines() if line.strip()]
        if not entries:
            return 0
        logs = self.runtime.logs(worker, LOG_LINES)
        added = 0
        with self.context.sessions() as db:
            for entry in entries:
                if db.get(Run, entry["id"]) is not None:
                    continue
                db.add(Run(
                    id=entry["id"], repository_id=repository_id, digest=digest, source=entry["source"],
                    caller=entry["caller"], status=entry["status"], cold=entry["cold"], error=entry["error"],
                    inputs=self._files(worker, entry["inputs"]),
                    outputs=None if entry["outputs"] is None else self._files(worker, entry["outputs"]),
                    duration_ms=entry["duration_ms"], logs=logs,
                    finished_at=datetime.fromtimestamp(entry["finished_at"], UTC),
                ))
                added += 1
            count_runs(db, repository_id, added)
            db.commit()
        return added

    def _files(self, worker: WorkerHandle, values: dict[str, Any]) -> dict[str, Any]:
        stored = {}
        for name, value in values.items():
            if isinstance(value, dict) and "file" in value:
                path = self.runtime.worker_file(worker, value["file"])
                if path.is_file() and path.stat().st_size <= MAX_STORED_FILE:
                    value = store_file(self.context.store, path.read_bytes(), value["name"])
                else:
                    value = {"name": value["name"], "size": value.get("size"), "missing": True}
            stored[name] = value
        return stored


def file_inputs_as_json(store: BlobStore, inputs: dict[str, Any]) -> dict[str, Any]:
    """Stored inputs back into a predict request: files as base64 again."""
    request = {}
    for name, value in inputs.items():
        if isinstance(value, dict) and "digest" in value:
            value = {"data": base64.b64encode(b"".join(store.read(value["digest"]))).decode(), "name": value["name"]}
        request[name] = value
    return request


def stored_outputs(store: BlobStore, outputs: dict[str, Any]) -> dict[str, Any]:
    """A predict response's outputs with base64 files moved into the blob store."""
    kept = {}
    for name, value in outputs.items():
        if isinstance(value, dict) and {"data", "name", "mime_type"} <= set(value):
            value = {**store_file(store, base64.b64decode(value["data"]), value["name"]),
                     "mime_type": value["mime_type"]}
        kept[name] = value
    return kept


def stored_inputs(store: BlobStore, inputs: dict[str, Any]) -> dict[str, Any]:
    """An async run's request inputs with base64 files moved into the blob store."""
    kept = {}
    for name, value in inputs.items():
        if isinstance(value, dict) and isinstance(value.get("data"), str):
            value = store_file(store, base64.b64decode(value["data"]), value.get("name") or name)
        kept[name] = value
    return kept


class AsyncRunner:
    """Carries out queued runs, oldest first; a run is claimed by one process only."""

    def __init__(self, context: RegistryContext, execute: Any, poll_seconds: float = 0.5):
        self.context = context
        self.execute = execute  # async (run_id, repository, digest, spec, inputs, caller) -> (status, outputs, error)
        self.poll_seconds = poll_seconds

    def _claim(self) -> Run | None:
        with self.context.sessions() as db:
            for run in db.scalars(select(Run).where(Run.status == "queued").order_by(Run.created_at).limit(8)):
                claimed = db.execute(update(Run).where(Run.id == run.id, Run.status == "queued")
                                     .values(status="running")).rowcount
                db.commit()
                if claimed:
                    return run
        return None

    def _finish(self, run_id: str, status: str, outputs: dict[str, Any] | None, error: str | None,
                duration_ms: float | None) -> None:
        with self.context.sessions() as db:
            run = db.get(Run, run_id)
            assert run is not None
            run.status, run.error, run.duration_ms, run.finished_at = status, error, duration_ms, utcnow()
            run.outputs = None if outputs is None else stored_outputs(self.context.store, outputs)
            db.commit()

    def _version(self, run: Run) -> tuple[Repository, dict[str, Any]]:
        with self.context.sessions() as db:
            repository = db.get(Repository, run.repository_id)
            manifest = db.scalar(select(Manifest).where(Manifest.repository_id == run.repository_id,
                                                        Manifest.digest == run.digest))
            assert repository is not None and manifest is not None
            return repository, manifest.spec or {}

    async def run_forever(self) -> None:
        while True:
            run = await run_in_threadpool(self._claim)
            if run is None:
                await asyncio.sleep(self.poll_seconds)
                continue
            repository, spec = await run_in_threadpool(self._version, run)
            request = await run_in_threadpool(file_inputs_as_json, self.context.store, run.inputs)
            status, outputs, error, duration = await self.execute(run.id, repository, run.digest, spec, request,
                                                                  run.caller)
            await run_in_threadpool(self._finish, run.id, status, outputs, error, duration)


def new_run_id() -> str:
    return str(uuid.uuid4())
