"""Paths in a spec name places inside the bundle, and nowhere else.

Checked twice: by their text when the spec is parsed (relative, no ``..``: :func:`inside_bundle`),
and against the bundle on disk when a spec is loaded from one, where a symbolic link could still
lead out (:func:`leaves_bundle`). The registry, the builder and the model server only ever
open a spec's path through these checks.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

PYTHON_VERSION = re.compile(r"^\d{1,2}(\.\d{1,3}){0,2}$")
MAX_SHOWN = 60


def inside_bundle(value: str) -> str:
    """``value`` unchanged if it is a relative path that stays inside the bundle; else a ``ValueError``."""
    if not value or "\0" in value:
        raise ValueError("must be a path inside the bundle")
    path = PurePosixPath(value)
    if path.is_absolute() or value.startswith("~"):
        raise ValueError(f"{_shown(value)} is an absolute path; name a file inside the bundle, relative to it")
    if ".." in path.parts:
        raise ValueError(f"{_shown(value)} leaves the bundle through '..'; name a file inside the bundle")
    return value


def python_version(value: str) -> str:
    """A Python version such as ``3.11`` (what ``uv venv --python`` is given), never a path or a name."""
    if not PYTHON_VERSION.match(value):
        raise ValueError(f"{_shown(value)} is not a Python version such as 3.11")
    return value


def leaves_bundle(bundle: Path, relative: str) -> bool:
    """Whether ``relative``, resolved on disk with its links followed, ends up outside ``bundle``."""
    root = bundle.resolve()
    return not (root / relative).resolve().is_relative_to(root)


def _shown(value: str) -> str:
    text = repr(value)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 4] + "…'"
