"""Virtualenvs for bundles, built with uv, shared by every version with the same requirements.

An environment is keyed by its inputs (Python version + normalised requirements), so
versions that ask for the same things share one. A new environment starts from a copy
of the ready environment whose requirements it contains most of — the paper's "base
container plus incremental packages" — and installs only the difference; uv's shared
cache hard-links what it has already downloaded.

    <root>/
    ├── <key>/              a ready environment (relocatable venv)
    ├── <key>.json          its record: requirements, base it grew from, what was installed, time
    ├── <key>.log           the installer's output
    └── .<key>.building-*   one being built; renamed to <key> only when complete
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name


class EnvironmentBuildError(RuntimeError):
    """An environment could not be built; ``log`` holds the installer's output."""

    def __init__(self, message: str, log: str = ""):
        self.log = log
        super().__init__(message)


def parse_requirements(text: str, source: str = "requirements.txt") -> tuple[str, ...]:
    """Requirement lines, normalised and sorted; options (``-r``, ``--index-url``) are refused."""
    requirements = set()
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-"):
            raise EnvironmentBuildError(f"{source}:{number}: options such as {line.split()[0]} are not supported; "
                                    "list packages only")
        try:
            requirement = Requirement(line)
        except InvalidRequirement as error:
            raise EnvironmentBuildError(f"{source}:{number}: {error}") from None
        requirement.name = canonicalize_name(requirement.name)
        requirements.add(str(requirement))
    return tuple(sorted(requirements))


@dataclass(frozen=True)
class EnvironmentSpec:
    """What an environment is built from. ``provided`` names packages (``name==version``) that
    come from elsewhere (the platform's own packages) and so are part of its identity, not installed."""

    python: str
    requirements: tuple[str, ...]
    provided: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        inputs = json.dumps({"python": self.python, "requirements": self.requirements, "provided": self.provided},
                            sort_keys=True)
        return hashlib.sha256(inputs.encode()).hexdigest()[:16]


@dataclass
class EnvironmentRecord:
    key: str
    python: str
    requirements: list[str]
    base: str | None
    provided: list[str] = field(default_factory=list)
    installed: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def requirement_set(self) -> frozenset[str]:
        return frozenset(self.requirements)


@dataclass(frozen=True)
class Environment:
    path: Path
    record: EnvironmentRecord

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"


def split_by_installed(requirements: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Requirements this Python's own installed packages do not satisfy, and those they do
    (as ``name==version``)."""
    from importlib.metadata import PackageNotFoundError, version

    missing, provided = [], []
    for line in requirements:
        requirement = Requirement(line)
        try:
            installed = version(requirement.name)
        except PackageNotFoundError:
            missing.append(line)
            continue
        if requirement.marker is None and requirement.specifier.contains(installed, prereleases=True):
            provided.append(f"{requirement.name}=={installed}")
        else:
            missing.append(line)
    return tuple(missing), tuple(sorted(provided))


def default_python() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def find_uv() -> str:
    from uv import find_uv_bin

    return find_uv_bin()


class EnvironmentBuilder:
    """Builds and finds environments under ``root``.

    ``index_args`` go to every ``uv pip install`` (``--no-index --find-links DIR`` for an
    offline wheelhouse, ``--index-url URL`` for a mirror).
    """

    def __init__(self, root: Path, cache: Path, uv: str | None = None, index_args: tuple[str, ...] = ()):
        self.root = root
        self.cache = cache
        self.uv = uv or find_uv()
        self.index_args = index_args
        root.mkdir(parents=True, exist_ok=True)

    def _uv(self, *args: str) -> subprocess.CompletedProcess[str]:
        environment = {**os.environ, "UV_CACHE_DIR": str(self.cache), "UV_PYTHON_DOWNLOADS": "never",
                       "UV_NO_PROGRESS": "1"}
        return subprocess.run([self.uv, *args], capture_output=True, text=True, env=environment, check=False)

    def records(self) -> list[EnvironmentRecord]:
        return [EnvironmentRecord(**json.loads(p.read_text())) for p in sorted(self.root.glob("*.json"))
                if (self.root / p.stem).is_dir()]

    def log(self, key: str, lines: int = 200) -> str:
        path = self.root / f"{key}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def find(self, spec: EnvironmentSpec) -> Environment | None:
        record_file = self.root / f"{spec.key}.json"
        if record_file.exists() and (self.root / spec.key).is_dir():
            return Environment(self.root / spec.key, EnvironmentRecord(**json.loads(record_file.read_text())))
        return None

    def closest_base(self, spec: EnvironmentSpec) -> EnvironmentRecord | None:
        """The ready environment of the same Python whose requirements are all wanted, and most of them."""
        wanted = set(spec.requirements)
        candidates = [r for r in self.records() if r.python == spec.python and r.requirement_set <= wanted
                      and r.provided == list(spec.provided)]
        return max(candidates, key=lambda r: len(r.requirements), default=None)

    def ensure(self, spec: EnvironmentSpec) -> Environment:
        """The environment for ``spec``, built now if there is none."""
        existing = self.find(spec)
        if existing:
            return existing
        started = time.perf_counter()
        base = self.closest_base(spec)
        building = self.root / f".{spec.key}.building-{uuid.uuid4().hex[:8]}"
        log = self.root / f"{spec.key}.log"
        try:
            self._start(building, spec, base, log)
            missing = sorted(set(spec.requirements) - (base.requirement_set if base else frozenset()))
            before = self._freeze(building)
            if missing:
                self._install(building, missing, log)
            installed = sorted(self._freeze(building) - before)
            record = EnvironmentRecord(key=spec.key, python=spec.python, requirements=list(spec.requirements),
                                       provided=list(spec.provided), base=base.key if base else None,
                                       installed=installed,
                                       seconds=round(time.perf_counter() - started, 3))
            try:
                building.rename(self.root / spec.key)
            except OSError:  # another builder finished the same environment first
                shutil.rmtree(building, ignore_errors=True)
                return self.find(spec) or self.ensure(spec)
            (self.root / f"{spec.key}.json").write_text(json.dumps(asdict(record), indent=2))
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
        return Environment(self.root / spec.key, record)

    def _start(self, target: Path, spec: EnvironmentSpec, base: EnvironmentRecord | None, log: Path) -> None:
        if base:
            shutil.copytree(self.root / base.key, target, symlinks=True)
            return
        result = self._uv("venv", "--quiet", "--relocatable", "--python", spec.python, str(target))
        log.write_text(result.stdout + result.stderr)
        if result.returncode != 0:
            raise EnvironmentBuildError(f"no Python {spec.python} for a new environment: {result.stderr.strip()}",
                                    result.stderr)

    def _install(self, target: Path, requirements: list[str], log: Path) -> None:
        result = self._uv("pip", "install", "--python", str(target / "bin" / "python"), *self.index_args,
                          *requirements)
        with log.open("a") as out:
            out.write(result.stdout + result.stderr)
        if result.returncode != 0:
            raise EnvironmentBuildError(f"installing {', '.join(requirements)} failed: {_last_lines(result.stderr)}",
                                    result.stderr)

    def _freeze(self, target: Path) -> set[str]:
        result = self._uv("pip", "freeze", "--python", str(target / "bin" / "python"))
        return {line.strip() for line in result.stdout.splitlines() if line.strip()}


def _last_lines(text: str, count: int = 6) -> str:
    return "\n".join(text.strip().splitlines()[-count:])
