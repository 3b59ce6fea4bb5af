"""Virtualenvs for bundles, built with uv in a sandbox, shared by every version with the same requirements.

An environment is keyed by its inputs (Python version + normalised requirements), so
versions that ask for the same things share one. A new environment starts from a copy
of the ready environment whose requirements it contains most of — the paper's "base
container plus incremental packages" — and installs only the difference.

A build runs author-controlled code: the build backends of source packages, and the ``.pth``
files of what is already installed, which run whenever the environment's Python starts. So
every uv call runs in a :mod:`sandbox`, as its unprivileged user, with a scrubbed environment
(no ``MODELHALL_*`` settings, no secrets), seeing the system, the Python installation, uv,
the operator's local package folders and the environment being built (with its scratch
folder, the only writable paths) — not the registry's data. Its network is its own
(slirp4netns), for the package index; ``--no-index`` builds get none. Each build has a
scratch folder of its own for uv's download cache and temp files: a cache shared by builds
would let one build's code plant a package that a later build, of someone else's model,
installs. A finished environment is sealed: owned by root (when the registry runs as root),
writable by nobody else, nothing in it but files, folders and links, so the workers that run
on it as the sandbox user cannot change it.

    <root>/
    ├── <key>/              a ready environment (relocatable venv)
    ├── <key>.json          its record: requirements, base it grew from, what was installed, time
    ├── <key>.log           the sandboxed installer's own output (its first 4 MiB)
    └── .<key>.building-*   one being built; renamed to <key> only when complete
    <scratch>/<key>-*/      a build's download cache and temp files, removed when it ends
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import select
import shutil
import stat
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from modelhall.adapters.runtimes.base import Build
from modelhall.adapters.runtimes.sandbox import SANDBOX_UID, Limits, bwrap_command, bwrap_path, limits
from modelhall.spec import load_spec_file

BUILD_LIMITS = Limits(memory=8 * 1024**3, cpus=float(os.cpu_count() or 1), processes=512, disk=8 * 1024**3)
BUILD_SECONDS = 1800.0  # one uv call
LOG_BYTES = 4 * 1024**2  # of the installer's output kept in <key>.log
OUTPUT_BYTES = 1024**2  # of its output kept in memory, from the end (errors, freeze)
MAX_REQUIREMENTS_BYTES = 1024**2
# Settings of the operator's that uv needs to reach a package index; they reach the build's code too.
UV_PASSTHROUGH = ("UV_INDEX_URL", "UV_EXTRA_INDEX_URL", "UV_DEFAULT_INDEX", "UV_INDEX", "UV_FIND_LINKS", "UV_NO_INDEX",
                  "UV_NATIVE_TLS", "SSL_CERT_FILE",
                  "SSL_CERT_DIR",
                  "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "no_proxy",
                  "all_proxy")
PIP_OPTIONS = frozenset({"-r", "--requirement", "-c", "--constraint", "-e", "--editable", "-i", "--index-url",
                         "--extra-index-url", "-f", "--find-links", "--no-index", "--pre", "--trusted-host", "--hash",
                         "--prefer-binary", "--only-binary", "--no-binary"})
ARCHIVE_SUFFIXES = (".whl", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar", ".zip", ".egg")
REMOTE_SCHEMES = ("https://", "git+https://")
FROZEN_LINE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(==\S+| @ \S+)$")  # name==1.0, name @ https://…


class EnvironmentBuildError(RuntimeError):
    """An environment could not be built; ``log`` holds the installer's output."""

    def __init__(self, message: str, log: str = ""):
        self.log = log
        super().__init__(message)


def parse_requirements(text: str, source: str = "requirements.txt") -> tuple[str, ...]:
    """Requirement lines, normalised and sorted.

    Options (``-r``, ``--index-url``, ``-e``), local files and folders (``./pkg``, ``dist/x.whl``,
    ``pkg @ file:///…``) and URLs other than ``https://`` are refused. An error names the line by
    its number and says what is wrong, never quoting it: the file is the author's, but an error
    must not become a way to read a file back.
    """
    requirements = set()
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source}:{number}"
        if line.startswith("-"):
            option = line.split()[0].split("=")[0]
            named = f"such as {option} " if option in PIP_OPTIONS else ""
            raise EnvironmentBuildError(f"{where}: options {named}are not supported; list packages only")
        if _names_a_local_path(line):
            raise EnvironmentBuildError(f"{where}: a local file or folder cannot be a requirement; name a package "
                                        "from the index, such as name==1.0")
        try:
            requirement = Requirement(line)
        except InvalidRequirement as error:
            raise EnvironmentBuildError(f"{where}: not a valid requirement ({_reason(error)}); a requirement names "
                                        "a package, such as name==1.0 or name[extra]>=2") from None
        if requirement.url is not None and not requirement.url.startswith(REMOTE_SCHEMES):
            raise EnvironmentBuildError(f"{where}: a direct reference must be an https:// or git+https:// URL; "
                                        "local files and other schemes are refused")
        requirement.name = canonicalize_name(requirement.name)
        requirements.add(str(requirement))
    return tuple(sorted(requirements))


def read_requirements(path: Path, source: str) -> str:
    """The requirements file a spec names (a path already checked to stay inside the bundle), or "" if the
    bundle has none. What is not a small UTF-8 file is an error that says so, not what it holds."""
    if not path.exists():
        return ""
    where = f"package.requirements_file ({source})"
    if not path.is_file():
        raise EnvironmentBuildError(f"{where}: is not a regular file")
    with path.open("rb") as requirements:
        raw = requirements.read(MAX_REQUIREMENTS_BYTES + 1)
    if len(raw) > MAX_REQUIREMENTS_BYTES:
        raise EnvironmentBuildError(f"{where}: is larger than {MAX_REQUIREMENTS_BYTES // 1024} KiB")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise EnvironmentBuildError(f"{where}: is not UTF-8 text") from None


def _names_a_local_path(line: str) -> bool:
    """``./pkg``, ``../x``, ``/abs``, ``~/x``, ``file:…``, ``dist/pkg.whl``, ``pkg-1.0.tar.gz``: pip would install
    these from the disk (and run their build backend), so they are refused before parsing."""
    head = line.split(";", 1)[0].strip()
    if head.startswith((".", "/", "~", "file:")):
        return True
    plain = "://" not in head and "@" not in head
    return plain and ("/" in head or "\\" in head or head.lower().endswith(ARCHIVE_SUFFIXES))


def _reason(error: InvalidRequirement) -> str:
    """What the parser expected, and where: its message without the quoted line that follows it."""
    cause = error.__cause__
    message, span = getattr(cause, "message", None), getattr(cause, "span", None)
    if isinstance(message, str) and isinstance(span, tuple):
        return f"{message.rstrip('.')}, at column {span[0] + 1}"
    return "its version or marker is malformed"


@dataclass(frozen=True)
class EnvironmentSpec:
    """What an environment is built from. ``provided`` names packages (``name==version``) that
    come from elsewhere (the platform's own packages) and so are part of its identity, not installed."""

    python: str
    requirements: tuple[str, ...]
    provided: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """A local environment's folder name (one machine's environments)."""
        return self.digest[:16]

    @property
    def digest(self) -> str:
        """A name shared across every repository of a registry, long enough that no one can make two sets
        of requirements collide (48 hex digits fit a Kubernetes label and, prefixed, a Job's name)."""
        inputs = json.dumps({"python": self.python, "requirements": self.requirements, "provided": self.provided},
                            sort_keys=True)
        return hashlib.sha256(inputs.encode()).hexdigest()[:48]


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


IMAGE_ENVIRONMENT = "image"  # the model-server image's own packages: no environment to fetch


IMAGE_BUILD = Build(environment=IMAGE_ENVIRONMENT, log="the model-server image's packages satisfy the requirements")


def beyond_the_image(bundle: Path) -> tuple[str, EnvironmentSpec]:
    """A version's requirements file, and what its environment is built from where the model-server image
    runs it: the requirements the image's packages (the platform's) do not satisfy."""
    spec = load_spec_file(bundle)
    if spec.package.type == "conda":
        raise ValueError("conda environments are not supported; use package.type: pip")
    source = spec.package.requirements or "requirements.txt"
    text = read_requirements(bundle / source, source) if spec.package.requirements else ""
    missing, provided = split_by_installed(parse_requirements(text, source))
    return source, EnvironmentSpec(default_python(), missing, provided)


def default_python() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _describe(record: EnvironmentRecord) -> str:
    origin = f"grown from environment {record.base}" if record.base else "new"
    return "\n".join([
        f"environment {record.key}: Python {record.python}, {origin}, built in {record.seconds:g} s",
        f"requirements: {', '.join(record.requirements) or 'none beyond the platform'}",
        *([f"provided by the platform: {', '.join(record.provided)}"] if record.provided else []),
        f"installed: {', '.join(record.installed) or 'nothing'}",
    ])


def find_uv() -> str:
    from uv import find_uv_bin

    return find_uv_bin()


class EnvironmentBuilder:
    """Builds and finds environments under ``root``; each build's scratch folder is made under ``scratch``.

    ``index_args`` go to every ``uv pip install`` (``--no-index --find-links DIR`` for an
    offline wheelhouse, ``--index-url URL`` for a mirror); local folders among them are visible,
    read-only, inside the build's sandbox.
    """

    def __init__(self, root: Path, scratch: Path, uv: str | None = None, index_args: tuple[str, ...] = (),
                 sandboxed: bool | None = None):
        self.root = root
        self.scratch = scratch
        self.uv = uv or find_uv()
        self.index_args = index_args
        self.sandboxed = bwrap_path() is not None if sandboxed is None else sandboxed
        root.mkdir(parents=True, exist_ok=True)
        scratch.mkdir(parents=True, exist_ok=True)

    def records(self) -> list[EnvironmentRecord]:
        return [EnvironmentRecord(**json.loads(p.read_text())) for p in sorted(self.root.glob("*.json"))
                if (self.root / p.stem).is_dir()]

    def log(self, key: str, lines: int = 200) -> str:
        """What the environment is (its record, in words), then the end of its installer's output, which
        is empty when there was nothing to install."""
        record_file, path = self.root / f"{key}.json", self.root / f"{key}.log"
        summary = (_describe(EnvironmentRecord(**json.loads(record_file.read_text()))) if record_file.exists()
                   else f"environment {key}: not built here")
        output = "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""
        return f"{summary}\n{output or '(the installer printed nothing)'}"

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
        attempt = uuid.uuid4().hex[:8]
        building = self.root / f".{spec.key}.building-{attempt}"
        scratch = self.scratch / f"{spec.key}-{attempt}"
        try:
            scratch.mkdir()
            _give_to_sandbox(scratch)
            with (self.root / f"{spec.key}.log").open("wb") as log:
                self._start(building, spec, base, log, scratch)
                missing = sorted(set(spec.requirements) - (base.requirement_set if base else frozenset()))
                before = self._freeze(building, scratch)
                if missing:
                    self._install(building, missing, log, scratch)
                installed = sorted(self._freeze(building, scratch) - before)
            _seal(building)
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
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return Environment(self.root / spec.key, record)

    def _start(self, target: Path, spec: EnvironmentSpec, base: EnvironmentRecord | None, log: BinaryIO,
               scratch: Path) -> None:
        if base:
            shutil.copytree(self.root / base.key, target, symlinks=True)
            _give_to_sandbox(target)
            return
        target.mkdir()
        _give_to_sandbox(target)
        code, output = self._uv(["venv", "--quiet", "--relocatable", "--allow-existing", "--python", spec.python,
                                 str(target)], target, scratch, log)
        if code != 0:
            raise EnvironmentBuildError(f"no Python {spec.python} for a new environment: {_last_lines(output)}",
                                        output)

    def _install(self, target: Path, requirements: list[str], log: BinaryIO, scratch: Path) -> None:
        code, output = self._uv(["pip", "install", "--python", str(target / "bin" / "python"), *self.index_args,
                                 *requirements], target, scratch, log, network="--no-index" not in self.index_args)
        if code != 0:
            raise EnvironmentBuildError(f"installing {', '.join(requirements)} failed: {_last_lines(output)}",
                                        output)

    def _freeze(self, target: Path, scratch: Path) -> set[str]:
        _, output = self._uv(["pip", "freeze", "--python", str(target / "bin" / "python")], target, scratch)
        return {line.strip() for line in output.splitlines() if FROZEN_LINE.match(line.strip())}

    def _uv(self, args: list[str], target: Path, scratch: Path, log: BinaryIO | None = None,
            network: bool = False) -> tuple[int, str]:
        """Run uv on ``target``, in the sandbox: its exit code and the end of its output, which also goes to
        ``log``. It may run for :data:`BUILD_SECONDS`, and writes nothing but ``target`` and ``scratch``."""
        command = [self.uv, *args]
        if self.sandboxed:
            command = bwrap_command(command, readable=self._readable(), writable=[target], workdir=Path("/tmp"),
                                    network=network, limits=BUILD_LIMITS, scratch=scratch)
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, env=self._environment(scratch),
                                   preexec_fn=limits(BUILD_LIMITS), start_new_session=True)
        assert process.stdout is not None
        with process.stdout:
            output = _read_until_exit(process, process.stdout.fileno(), log)
        return process.wait(), output

    def _readable(self) -> list[Path]:
        """The Python installation, uv, and the local folders named in ``index_args`` (a wheelhouse)."""
        local = {Path(arg).resolve() for arg in self.index_args if os.path.isabs(arg) and os.path.exists(arg)}
        return sorted({Path(sys.base_prefix).resolve(), Path(self.uv).resolve(), *local})

    def _environment(self, scratch: Path) -> dict[str, str]:
        """uv's environment: nothing of the registry's but the index and proxy settings it needs."""
        temp = "/tmp" if self.sandboxed else str(scratch)
        passed = {name: value for name, value in os.environ.items() if name in UV_PASSTHROUGH}
        return {**passed, "PATH": f"{Path(sys.base_prefix) / 'bin'}:/usr/local/bin:/usr/bin:/bin", "HOME": temp,
                "TMPDIR": temp, "LANG": "C.UTF-8", "UV_CACHE_DIR": f"{temp}/uv-cache", "UV_PYTHON_DOWNLOADS": "never",
                "UV_NO_PROGRESS": "1", "UV_NO_CONFIG": "1", "UV_LINK_MODE": "copy"}


def _read_until_exit(process: subprocess.Popen[bytes], output: int, log: BinaryIO | None) -> str:
    """Everything ``process`` writes, until it ends: the first :data:`LOG_BYTES` go to ``log``, the last
    :data:`OUTPUT_BYTES` are returned. Past :data:`BUILD_SECONDS` the process (its sandbox with it) is killed."""
    deadline = time.monotonic() + BUILD_SECONDS
    kept, logged = bytearray(), 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            process.kill()
            process.wait()
            raise EnvironmentBuildError(f"the build took longer than {BUILD_SECONDS:g} s and was stopped",
                                        kept.decode(errors="replace"))
        if not select.select([output], [], [], remaining)[0]:
            continue
        chunk = os.read(output, 65536)
        if not chunk:
            return kept.decode(errors="replace")
        if log is not None and logged < LOG_BYTES:
            log.write(chunk[: LOG_BYTES - logged])
            logged += len(chunk)
        kept = (kept + chunk)[-OUTPUT_BYTES:]


def _give_to_sandbox(path: Path) -> None:
    """Make ``path`` (and what is in it) the sandbox user's, so that a build can write there."""
    if os.geteuid() == 0:
        for item in _walk(path):
            os.lchown(item, SANDBOX_UID, SANDBOX_UID)


def _seal(environment: Path) -> None:
    """Make a built environment read-only for all but root: owned by root (when the registry is root),
    no write bits for group and others, no set-id bits, and nothing but files, folders and links (a
    FIFO or a socket left by a build would hang or break whatever copies the environment later)."""
    is_root = os.geteuid() == 0
    for item in _walk(environment):
        mode = os.lstat(item).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
            os.unlink(item)
            continue
        if is_root:
            os.lchown(item, 0, 0)
        if not stat.S_ISLNK(mode):
            os.chmod(item, stat.S_IMODE(mode) & 0o755 | 0o200)


def _walk(top: Path) -> list[Path]:
    """``top`` and everything under it, never following a link."""
    items = [top]
    for directory, folders, files in os.walk(top, followlinks=False):
        items += [Path(directory, name) for name in (*folders, *files)]
    return items


def _last_lines(text: str, count: int = 6) -> str:
    return "\n".join(text.strip().splitlines()[-count:])
