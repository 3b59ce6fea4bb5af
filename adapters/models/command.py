"""The ``command`` adapter: the MLC paper's way of running a model as a shell command.

Each call runs in its own staged copy of the bundle: links to the bundle's files, and
real, empty folders at the places the command writes (input destinations, output paths).
So the bundle itself stays read-only and calls can run side by side.

Per call: file inputs with a ``destination`` are written there, other inputs fill
``{name}`` placeholders in the command or are appended as ``--name value`` (always
shell-quoted); the command runs with a time limit; outputs come from stdout (text
outputs without a path) or from the newest file at each output's ``path``.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any

from modelhall.adapters.models.base import ModelError
from modelhall.spec import Spec
from modelhall.spec.fields import BooleanInput

STDERR_TAIL = 2000
STDOUT_TYPES = {"text", "markdown", "json", "number"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp"}


class CommandAdapter:
    def __init__(self, spec: Spec, bundle: Path):
        self.spec = spec
        self.bundle = bundle.resolve()
        self.workdir = PurePosixPath(spec.runtime.workdir or ".")
        self._writable: set[PurePosixPath] = set()
        self._loaded = False

    def load(self) -> None:
        if not (self.bundle / self.workdir).is_dir():
            raise ModelError(f"the working directory {self.spec.runtime.workdir!r} is not in the bundle")
        places = [getattr(field, "destination", None) for field in self.spec.inputs]
        places += [field.path for field in self.spec.outputs]
        self._writable = {self._from_root(place) for place in places if place}
        self._loaded = True

    def _from_root(self, place: str) -> PurePosixPath:
        """``place``, relative to the working directory, as a normalised path from the bundle root."""
        parts: list[str] = []
        for part in (self.workdir / place).parts:
            if part == "..":
                if not parts:
                    raise ModelError(f"{place!r} points outside the bundle")
                parts.pop()
            elif part not in (".", ""):
                parts.append(part)
        if not parts or PurePosixPath(place).is_absolute():
            raise ModelError(f"{place!r} is not a place inside the bundle")
        return PurePosixPath(*parts)

    def predict(self, inputs: dict[str, Any], workdir: Path) -> dict[str, Any]:
        if not self._loaded:
            raise RuntimeError("load() must be called before predict()")
        stage = workdir / "bundle"
        self._mirror(self.bundle, stage, PurePosixPath())
        command = self._command(inputs, stage)
        completed = self._run(command, stage / self.workdir)
        return self._collect(completed.stdout, stage, workdir)

    def _mirror(self, source: Path, target: Path, relative: PurePosixPath) -> None:
        """Link each entry of ``source`` into ``target``; writable places and their parents become
        real folders instead: empty for the places, mirrored one level further for the parents."""
        target.mkdir(parents=True, exist_ok=True)
        if relative in self._writable:
            return
        for entry in source.iterdir():
            path = relative / entry.name
            if not any(path == place or path in place.parents for place in self._writable):
                (target / entry.name).symlink_to(entry)
            elif entry.is_dir() and not entry.is_symlink():
                self._mirror(entry, target / entry.name, path)

    def _command(self, inputs: dict[str, Any], stage: Path) -> str:
        assert self.spec.runtime.command
        command = self.spec.runtime.command
        appended: list[str] = []
        for field in self.spec.inputs:
            value = inputs.get(field.name)
            destination = getattr(field, "destination", None)
            if value is None:
                continue
            if destination:
                self._place(Path(value), destination, stage)
            elif "{" + field.name + "}" in command:
                command = command.replace("{" + field.name + "}", shlex.quote(str(value)))
            elif field.name == "flags":
                appended += [shlex.quote(token) for token in shlex.split(str(value))]
            elif isinstance(field, BooleanInput):
                appended += [f"--{field.name}"] if value else []
            else:
                appended += [f"--{field.name}", shlex.quote(str(value))]
        return " ".join([command, *appended])

    def _place(self, source: Path, destination: str, stage: Path) -> None:
        target = stage / self._from_root(destination)
        if destination.endswith("/") or not target.suffix:
            target.mkdir(parents=True, exist_ok=True)
            target = target / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)

    def _run(self, command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        # `python` in the command means the environment serving this bundle (its own virtualenv
        # under a runtime), not whatever comes first on the caller's PATH.
        environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        try:
            completed = subprocess.run(command, shell=True, cwd=cwd, capture_output=True, text=True,
                                       timeout=self.spec.runtime.timeout, env=environment)
        except subprocess.TimeoutExpired:
            raise ModelError(f"the command took longer than {self.spec.runtime.timeout:g} s and was stopped") from None
        if completed.returncode != 0:
            raise ModelError(f"the command exited with {completed.returncode}: {completed.stderr[-STDERR_TAIL:]}")
        return completed

    def _collect(self, stdout: str, stage: Path, workdir: Path) -> dict[str, Any]:
        results: dict[str, Any] = {}
        for field in self.spec.outputs:
            if field.path is None:
                if field.type not in STDOUT_TYPES:
                    raise ModelError(f"output {field.name!r} of type {field.type} needs a path to read it from")
                results[field.name] = json.loads(stdout) if field.type == "json" else stdout.strip()
                continue
            results[field.name] = self._newest(stage / self._from_root(field.path), field.type == "image")
        return results

    @staticmethod
    def _newest(path: Path, images_only: bool) -> Path:
        if path.is_file():
            return path
        candidates = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else []
        if images_only:
            candidates = [p for p in candidates if p.suffix.lower() in IMAGE_SUFFIXES]
        if not candidates:
            raise ModelError(f"the command wrote no {'image ' if images_only else ''}file at {path.name!r}")
        return max(candidates, key=lambda p: p.stat().st_mtime_ns)
