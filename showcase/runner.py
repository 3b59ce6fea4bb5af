"""One loaded model behind the demo and the predict API: health, predictions, metrics.

Health follows cog's explicit states: ``starting`` while the adapter loads (in a
background thread, so the server answers at once), then ``ready`` or ``failed``.
"""

from __future__ import annotations

import enum
import json
import shutil
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from modelhall.adapters.models import ModelError, open_adapter
from modelhall.spec import Spec, load_spec_file
from modelhall.showcase.values import Upload, normalise_outputs, parse_inputs

KEPT_CALLS = 64


class Health(enum.StrEnum):
    STARTING = "starting"
    READY = "ready"
    FAILED = "failed"


class NotReadyError(RuntimeError):
    pass


@dataclass(frozen=True)
class Prediction:
    outputs: dict[str, Any]
    seconds: float


@dataclass(frozen=True)
class RunContext:
    """How a call came (``api`` or ``demo``) and the gateway's signed ticket for it
    (``X-Modelhall-Context``), which the journal carries back unread: who asked, which run
    and whether it woke the model are the registry's to say, not the worker's."""

    ticket: str | None = None
    source: str = "api"

    @classmethod
    def from_headers(cls, headers: Mapping[str, str], source: str) -> RunContext:
        return cls(ticket=headers.get("x-modelhall-context") or None, source=source)


JOURNAL_KEPT = 1000
MAX_INLINE_TEXT = 2000


class RunJournal:
    """The worker's last predictions, numbered, for the registry to read over the worker's API
    (``GET /_internal/journal?after=N``). Files are named by ids the journal hands out, and served
    by id; the registry never learns a path. Kept in memory: runs of a worker that dies before the
    registry read them are lost with it."""

    def __init__(self, kept: int = JOURNAL_KEPT):
        self._entries: deque[dict[str, Any]] = deque(maxlen=kept)
        self._files: dict[str, Path] = {}
        self._next = 1
        self._lock = threading.Lock()

    def record(self, context: RunContext, inputs: Mapping[str, Any], outputs: Mapping[str, Any] | None,
               error: str | None, seconds: float, workdir: Path) -> None:
        files: dict[str, Path] = {}
        entry = {
            "context": context.ticket, "source": context.source, "status": "failed" if error else "succeeded",
            "error": error,
            "inputs": {name: self._value(value, workdir, name, files) for name, value in inputs.items()},
            "outputs": None if outputs is None else {n: self._value(v, workdir, n, files) for n, v in outputs.items()},
            "duration_ms": round(seconds * 1000, 3), "finished_at": time.time(),
        }
        with self._lock:
            if len(self._entries) == self._entries.maxlen:
                for file_id in self._entries[0]["files"]:
                    self._files.pop(file_id, None)
            entry["seq"], self._next = self._next, self._next + 1
            entry["files"] = list(files)
            self._entries.append(entry)
            self._files.update(files)

    def read(self, after: int, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` entries numbered above ``after``, oldest first."""
        with self._lock:
            return [{k: v for k, v in e.items() if k != "files"} for e in self._entries if e["seq"] > after][:limit]

    def file(self, file_id: str) -> Path | None:
        with self._lock:
            return self._files.get(file_id)

    @staticmethod
    def _value(value: Any, workdir: Path, name: str, files: dict[str, Path]) -> Any:
        if isinstance(value, Image.Image):
            workdir.mkdir(parents=True, exist_ok=True)
            path = workdir / f"{name}.png"
            value.save(path)
            value = path
        if isinstance(value, Path):
            file_id = uuid.uuid4().hex
            files[file_id] = value
            return {"file": file_id, "name": value.name, "size": value.stat().st_size if value.exists() else None}
        if isinstance(value, str) and len(value) > MAX_INLINE_TEXT:
            return {"omitted": f"{len(value)} characters"}
        if isinstance(value, (Upload, bytes)) or isinstance(value, dict) and "data" in value:
            return {"omitted": "a file that was refused"}
        try:  # a caller's NaN (Python's JSON reader takes it) would make every journal page unwritable
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError, RecursionError):
            return {"omitted": "a value JSON cannot carry"}
        return value


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.predictions = Counter("modelhall_predictions", "Predictions by outcome", ["outcome"],
                                  registry=self.registry)
        self.seconds = Histogram("modelhall_prediction_seconds", "Time to run one prediction", registry=self.registry)
        self.ready = Gauge("modelhall_model_ready", "1 once the model is loaded", registry=self.registry)
        self.load_seconds = Gauge("modelhall_model_load_seconds", "Time the model took to load",
                                  registry=self.registry)


class ModelRunner:
    def __init__(self, spec: Spec, bundle: Path, scratch: Path, digest: str | None = None):
        self.spec = spec
        self.bundle = bundle
        self.digest = digest
        self.scratch = scratch
        self.journal = RunJournal()
        self.health = Health.STARTING
        self.error: str | None = None
        self.metrics = Metrics()
        self._on_settled: list[Callable[[], None]] = []
        self._adapter = open_adapter(spec, bundle)
        self._loader: threading.Thread | None = None

    def load(self) -> None:
        started = time.perf_counter()
        try:
            self._adapter.load()
        except Exception as error:  # anything the author's loading code raises
            self.error = f"{type(error).__name__}: {error}"
            self.health = Health.FAILED
        else:
            self.metrics.load_seconds.set(time.perf_counter() - started)
            self.metrics.ready.set(1)
            self.health = Health.READY
        for callback in list(self._on_settled):
            callback()

    def when_settled(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (from the loading thread, or now) once loading has ended; it may be called twice."""
        self._on_settled.append(callback)
        if self.health is not Health.STARTING:
            callback()

    def start_loading(self) -> None:
        """Load in a background thread (once), so the server can answer /healthz meanwhile."""
        if self._loader is None:
            self._loader = threading.Thread(target=self.load, name="model-load", daemon=True)
            self._loader.start()

    def predict(self, raw: Mapping[str, Any], context: RunContext = RunContext()) -> Prediction:
        """Check ``raw`` against the spec, run the model, normalise what it returned.

        Raises ``InputError`` (the caller's fault), :class:`ModelError` (the model's) or
        :class:`NotReadyError`. Every attempt is written to the run journal.
        """
        if self.health is not Health.READY:
            raise NotReadyError(self.error or "the model is still loading")
        workdir = self.scratch / uuid.uuid4().hex
        started = time.perf_counter()
        inputs: Mapping[str, Any] = raw
        try:
            inputs = parse_inputs(self.spec, raw, workdir / "in")
            result = self._adapter.predict(inputs, workdir / "out")
            try:
                outputs = normalise_outputs(self.spec, result, workdir / "out")
            except (TypeError, ValueError) as error:  # what it returned does not fit the spec's outputs
                raise ModelError(f"unusable result: {error}") from error
        except (ModelError, ValueError) as error:
            outcome = "model_error" if isinstance(error, ModelError) else "input_error"
            self.metrics.predictions.labels(outcome).inc()
            self._journal(context, inputs, None, str(error), time.perf_counter() - started, workdir)
            raise
        finally:
            self._prune()
        seconds = time.perf_counter() - started
        self.metrics.predictions.labels("ok").inc()
        self.metrics.seconds.observe(seconds)
        self._journal(context, inputs, outputs, None, seconds, workdir)
        return Prediction(outputs=outputs, seconds=seconds)

    def _journal(self, context: RunContext, inputs: Mapping[str, Any], outputs: Mapping[str, Any] | None,
                 error: str | None, seconds: float, workdir: Path) -> None:
        self.journal.record(context, inputs, outputs, error, seconds, workdir / "journal")

    def _prune(self) -> None:
        """Keep the files of the last calls (the demo serves them after the call), drop older ones."""
        calls = sorted(self.scratch.iterdir(), key=lambda p: p.stat().st_mtime_ns) if self.scratch.exists() else []
        for old in calls[:-KEPT_CALLS]:
            shutil.rmtree(old, ignore_errors=True)


def open_runner(bundle: Path, digest: str | None = None, scratch: Path | None = None) -> ModelRunner:
    """The runner for the bundle in ``bundle``."""
    bundle = bundle.resolve()
    scratch = scratch or Path(tempfile.mkdtemp(prefix="modelhall-serve-"))
    return ModelRunner(load_spec_file(bundle), bundle, scratch, digest)
