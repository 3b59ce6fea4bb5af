"""The ``python`` adapter: ``predict.py:predict`` (a function) or ``predict.py:Model`` (a class).

A class is instantiated once and its ``setup()`` called at load time; each prediction
calls ``predict(**inputs)``. Image inputs arrive as PIL images.

Each call has the spec's time limit (``runtime.timeout``). The call runs in a thread of its
own; past the limit it is abandoned and fails with a :class:`ModelError`, and the worker
serves the next calls. A subprocess could be killed instead, but the model lives in this
process — loaded once, often gigabytes, with threads (torch, OpenMP) that a ``fork`` would
break — so each call would have to load it again. An abandoned call keeps its thread until
it returns: it still uses the worker's CPUs and memory, which the sandbox limits.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from modelhall.adapters.models.base import ModelError
from modelhall.spec import Spec
from modelhall.spec.fields import ImageInput


class PythonAdapter:
    def __init__(self, spec: Spec, bundle: Path):
        self.spec = spec
        self.bundle = bundle.resolve()
        self._predict: Any = None

    def load(self) -> None:
        assert self.spec.runtime.entrypoint
        filename, _, attribute = self.spec.runtime.entrypoint.partition(":")
        module = self._import(self.bundle / filename)
        target = getattr(module, attribute, None)
        if target is None:
            raise ModelError(f"{filename} defines no {attribute!r}")
        if inspect.isclass(target):
            instance = target()
            if hasattr(instance, "setup"):
                instance.setup()
            target = instance.predict
        self._predict = target

    def _import(self, path: Path) -> Any:
        if not path.is_file():
            raise ModelError(f"the entrypoint file {path.name} is not in the bundle")
        if str(self.bundle) not in sys.path:
            sys.path.insert(0, str(self.bundle))  # so the entrypoint can import its sibling modules
        module_spec = importlib.util.spec_from_file_location(f"modelhall_bundle_{path.stem}", path)
        assert module_spec and module_spec.loader
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        return module

    def predict(self, inputs: dict[str, Any], workdir: Path) -> Any:
        if self._predict is None:
            raise RuntimeError("load() must be called before predict()")
        arguments = dict(inputs)
        for field in self.spec.inputs:
            if isinstance(field, ImageInput) and arguments.get(field.name) is not None:
                arguments[field.name] = Image.open(arguments[field.name])
        return call_with_time_limit(self._predict, arguments, self.spec.runtime.timeout)


def call_with_time_limit(function: Callable[..., Any], arguments: dict[str, Any], seconds: float) -> Any:
    """``function(**arguments)`` in a daemon thread, waited for ``seconds`` at most; any exception it raises,
    or running out of time, is a :class:`ModelError`."""
    outcome: dict[str, Any] = {}

    def call() -> None:
        try:
            outcome["result"] = function(**arguments)
        except BaseException as error:  # noqa: BLE001 - the author's code: any exception is the model failing
            outcome["error"] = error

    thread = threading.Thread(target=call, name="prediction", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise ModelError(f"the prediction took longer than {seconds:g} s (runtime.timeout) and was abandoned")
    if "error" in outcome:
        error = outcome["error"]
        raise ModelError(f"{type(error).__name__}: {error}") from error
    return outcome["result"]
