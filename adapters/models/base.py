"""The model adapter protocol: load once, then predict many.

Contract every adapter keeps (``tests/test_adapters.py`` runs the shared part on each):

- ``load()`` does the slow work (imports, weights) once; ``predict`` before it is an error.
- ``predict`` receives checked, typed inputs (see ``showcase.values.parse_inputs``):
  text/number/integer/boolean/choice/json as Python values, images as paths the
  adapter may open, audio/video/file as paths. It returns what the model gave; the
  caller normalises that against the spec's outputs.
- An exception from the model's own code surfaces as :class:`ModelError` with the
  original message; the adapter stays usable for the next call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from modelhall.spec import Spec


class ModelError(RuntimeError):
    """The model's code failed on this input."""


class ModelAdapter(Protocol):
    def load(self) -> None: ...

    def predict(self, inputs: dict[str, Any], workdir: Path) -> Any:
        """Run one prediction; ``workdir`` is a fresh directory for this call's files."""


def open_adapter(spec: Spec, bundle: Path) -> ModelAdapter:
    """The adapter ``spec.runtime.adapter`` names, for the bundle unpacked at ``bundle``."""
    if spec.runtime.adapter == "python":
        from modelhall.adapters.models.python_entrypoint import PythonAdapter

        return PythonAdapter(spec, bundle)
    if spec.runtime.adapter == "command":
        from modelhall.adapters.models.command import CommandAdapter

        return CommandAdapter(spec, bundle)
    from modelhall.adapters.models.huggingface import HuggingFaceAdapter

    return HuggingFaceAdapter(spec, bundle)
