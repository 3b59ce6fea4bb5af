"""One loaded model behind the demo and the predict API: health, predictions, metrics.

Health follows cog's explicit states: ``starting`` while the adapter loads (in a
background thread, so the server answers at once), then ``ready`` or ``failed``.
"""

from __future__ import annotations

import enum
import shutil
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from modelhall.adapters.models import ModelError, open_adapter
from modelhall.spec import Spec
from modelhall.showcase.values import normalise_outputs, parse_inputs

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
        self.health = Health.STARTING
        self.error: str | None = None
        self.metrics = Metrics()
        self._adapter = open_adapter(spec, bundle)

    def load(self) -> None:
        started = time.perf_counter()
        try:
            self._adapter.load()
        except Exception as error:  # anything the author's loading code raises
            self.error = f"{type(error).__name__}: {error}"
            self.health = Health.FAILED
            return
        self.metrics.load_seconds.set(time.perf_counter() - started)
        self.metrics.ready.set(1)
        self.health = Health.READY

    def start_loading(self) -> threading.Thread:
        thread = threading.Thread(target=self.load, name="model-load", daemon=True)
        thread.start()
        return thread

    def predict(self, raw: Mapping[str, Any]) -> Prediction:
        """Check ``raw`` against the spec, run the model, normalise what it returned.

        Raises ``InputError`` (the caller's fault), :class:`ModelError` (the model's) or
        :class:`NotReadyError`.
        """
        if self.health is not Health.READY:
            raise NotReadyError(self.error or "the model is still loading")
        workdir = self.scratch / uuid.uuid4().hex
        started = time.perf_counter()
        try:
            inputs = parse_inputs(self.spec, raw, workdir / "in")
        except ValueError:
            self.metrics.predictions.labels("input_error").inc()
            raise
        try:
            result = self._adapter.predict(inputs, workdir / "out")
            outputs = normalise_outputs(self.spec, result, workdir / "out")
        except ModelError:
            self.metrics.predictions.labels("model_error").inc()
            raise
        except (TypeError, ValueError) as error:  # what it returned does not fit the spec's outputs
            self.metrics.predictions.labels("model_error").inc()
            raise ModelError(f"unusable result: {error}") from error
        finally:
            self._prune()
        seconds = time.perf_counter() - started
        self.metrics.predictions.labels("ok").inc()
        self.metrics.seconds.observe(seconds)
        return Prediction(outputs=outputs, seconds=seconds)

    def _prune(self) -> None:
        """Keep the files of the last calls (the demo serves them after the call), drop older ones."""
        calls = sorted(self.scratch.iterdir(), key=lambda p: p.stat().st_mtime_ns) if self.scratch.exists() else []
        for old in calls[:-KEPT_CALLS]:
            shutil.rmtree(old, ignore_errors=True)
