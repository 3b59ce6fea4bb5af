"""The local runtime: model servers as processes on this machine, each in its version's virtualenv.

Environments come from :mod:`environments`. The platform's own packages (the model
server, Gradio, and whatever else is installed beside it) are not installed again into
every environment: a ``.pth`` file appends the platform's site-packages *after* the
environment's own. A requirement the platform already satisfies is used from there; only
the others are installed, into the environment, where they win. The platform is the
base layer, each version's own packages the increment.

Workers run inside :mod:`sandbox` when bwrap is there. Each answers HTTP on a Unix socket
that the registry binds itself, in a directory only the registry can reach, and hands to
the worker as an open file descriptor: a worker has no path it could replace with a link to
another worker's socket, and no directory it shares with any other worker.

    <data dir>/
    ├── environments/            built by EnvironmentBuilder
    ├── uv-cache/<build>/        each build's own download cache and temp files, removed after it
    ├── logs/<socket name>.log   each worker's stdout and stderr
    └── sandboxes/<name>/tmp/    an unsandboxed worker's temp dir (a sandboxed one has a size-limited tmpfs)
    <temp dir>/modelhall-<id>/   the workers' sockets, for the registry only (short paths: Unix
                                 sockets allow ~100 bytes)
"""

from __future__ import annotations

import contextlib
import hashlib
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sysconfig
import tempfile
import threading
import time
import uuid
from pathlib import Path

from modelhall.adapters.runtimes.base import Build, Target, UnschedulableError, WorkerHandle
from modelhall.adapters.runtimes.environments import (
    EnvironmentBuilder,
    EnvironmentSpec,
    default_python,
    parse_requirements,
    read_requirements,
    split_by_installed,
)
from modelhall.adapters.runtimes.sandbox import (
    Limits,
    bwrap_command,
    bwrap_path,
    gpu_devices,
    limits,
    platform_paths,
)
from modelhall.spec import Spec, load_spec_file

class NoGPUError(UnschedulableError):
    """The spec asks for GPUs this machine does not have free, and allows no CPU fallback."""


class NetworkNotAllowedError(UnschedulableError):
    """The spec asks for network access, which this registry's operator has not allowed."""


def detect_gpus() -> list[str]:
    """GPU ids on this machine: ``MODELHALL_GPUS`` (e.g. "0,1") or what ``nvidia-smi -L`` lists."""
    configured = os.environ.get("MODELHALL_GPUS")
    if configured is not None:
        return [gpu for gpu in configured.split(",") if gpu.strip()]
    if shutil.which("nvidia-smi") is None:
        return []
    listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False).stdout
    return [str(index) for index, line in enumerate(listed.splitlines()) if line.startswith("GPU ")]


PLATFORM_PTH = "modelhall-platform.pth"
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
STOP_GRACE_SECONDS = 5.0


class LocalRuntime:
    def __init__(self, data_dir: Path, sandboxed: bool | None = None, index_args: tuple[str, ...] = (),
                 allow_network: bool = False):
        self.data_dir = data_dir.resolve()
        self.allow_network = allow_network
        self.logs_dir = self.data_dir / "logs"
        self.sandboxes = self.data_dir / "sandboxes"
        tag = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:10]
        self.sockets = Path(tempfile.gettempdir()) / f"modelhall-{tag}"
        self.sandboxed = bwrap_path() is not None if sandboxed is None else sandboxed
        self.environments = EnvironmentBuilder(self.data_dir / "environments", self.data_dir / "uv-cache",
                                               index_args=index_args)
        self.gpus = detect_gpus()
        self._gpu_holders: dict[str, WorkerHandle] = {}  # GPU id → the worker using it
        self._sockets_lock = threading.Lock()  # the sockets folder goes with its last socket, not under a new one

    def build(self, bundle: Path, target: Target) -> Build:
        """The version's environment, built in a sandbox if it is new (see :mod:`environments`)."""
        spec = load_spec_file(bundle)  # every path it names stays inside the bundle, links followed
        if spec.package.type == "conda":
            raise ValueError("conda environments are not supported by the local runtime; use package.type: pip")
        source = spec.package.requirements or "requirements.txt"
        text = read_requirements(bundle / source, source) if spec.package.requirements else ""
        requirements = parse_requirements(text, source)
        python = spec.package.python or default_python()
        missing, provided = split_by_installed(requirements) if python == default_python() else (requirements, ())
        environment = self.environments.ensure(EnvironmentSpec(python, missing, provided))
        self._link_platform(environment.path)
        return Build(environment=environment.record.key,
                     log=(self.environments.root / f"{environment.record.key}.log").read_text(errors="replace"))

    def _link_platform(self, environment: Path) -> None:
        """Write the platform's ``.pth`` into the environment, which a build filled: no link in it is
        followed, lest a build make the registry write elsewhere (``lib`` → ``/etc/cron.d``)."""
        folder = os.open(environment, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            for part in ("lib", None, "site-packages"):
                if part is None:  # lib/python3.X
                    (part,) = [name for name in os.listdir(folder) if re.fullmatch(r"python\d+\.\d+", name)]
                inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=folder)
                os.close(folder)
                folder = inner
            with contextlib.suppress(FileNotFoundError):
                os.unlink(PLATFORM_PTH, dir_fd=folder)
            pth = os.open(PLATFORM_PTH, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=folder)
            with os.fdopen(pth, "w") as out:
                out.write(f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
        finally:
            os.close(folder)

    def _assign_gpus(self, spec: Spec, worker: WorkerHandle) -> list[str]:
        wanted = spec.resources.gpu.count
        if wanted == 0:
            return []
        for gpu, holder in list(self._gpu_holders.items()):
            if not self.alive(holder):
                del self._gpu_holders[gpu]
        free = [gpu for gpu in self.gpus if gpu not in self._gpu_holders]
        if len(free) < wanted:
            if spec.resources.gpu.cpu_fallback:
                return []
            raise NoGPUError(f"no GPU available: the model needs {wanted}, {len(free)} of {len(self.gpus)} are free "
                             "on this machine (set resources.gpu.cpu_fallback: true to run it on the CPU)")
        for gpu in free[:wanted]:
            self._gpu_holders[gpu] = worker
        return free[:wanted]

    def start(self, bundle: Path, build: Build, target: Target, root_path: str) -> WorkerHandle:
        digest = target.digest
        spec = load_spec_file(bundle)
        network = self._network(spec)  # refused before anything is set up for the worker
        name = f"{digest.split(':')[-1][:12]}-{uuid.uuid4().hex[:6]}"
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        private_tmp = self.sandboxes / name / "tmp"  # an unsandboxed worker's temp dir (a sandbox has a tmpfs)
        if not self.sandboxed:
            private_tmp.mkdir(parents=True)
        with self._sockets_lock:
            self.sockets.mkdir(mode=0o700, parents=True, exist_ok=True)
            listener = self._listen(self.sockets / f"{name}.sock")
        endpoint = f"unix:{listener.getsockname()}"
        gpus = self._assign_gpus(spec, WorkerHandle(f"{name}:0", endpoint))
        environment = self.environments.root / build.environment
        command = [str(environment / "bin" / "python"), "-m", "modelhall.showcase.worker", str(bundle),
                   "--fd", str(listener.fileno()), "--worker-id", name, "--digest", digest, "--root-path", root_path]
        if self.sandboxed:
            command = bwrap_command(command, readable=[bundle, environment, *platform_paths()], writable=[],
                                    workdir=bundle, network=network, limits=self._limits(spec, gpus),
                                    devices=gpu_devices(gpus))
        log = self.logs_dir / f"{name}.log"
        with log.open("ab") as out, listener:
            process = subprocess.Popen(
                command, cwd=bundle, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # outlives a registry restart, which adopts it again
                pass_fds=(listener.fileno(),),
                preexec_fn=limits(self._limits(spec, gpus)),
                env={**self._environment(spec, private_tmp), "CUDA_VISIBLE_DEVICES": ",".join(gpus)},
            )
        handle = WorkerHandle(f"{name}:{process.pid}", endpoint)
        for gpu in gpus:
            self._gpu_holders[gpu] = handle
        return handle

    @staticmethod
    def _listen(path: Path) -> socket.socket:
        """A listening Unix socket at ``path``, which the worker inherits as a descriptor."""
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(path))
        listener.listen(128)
        return listener

    def _environment(self, spec: Spec, private_tmp: Path) -> dict[str, str]:
        """The worker's environment variables: none of the registry's settings or secrets. ``MALLOC_ARENA_MAX``
        keeps glibc from reserving address space per thread, which ``RLIMIT_AS`` would count."""
        keep = {k: v for k, v in os.environ.items() if k in ("LANG", "LC_ALL", "TZ")}
        temp = "/tmp" if self.sandboxed else str(private_tmp)
        path = SANDBOX_PATH if self.sandboxed else os.environ.get("PATH", SANDBOX_PATH)
        return {**keep, "PATH": path, "HOME": temp, "TMPDIR": temp, "HF_HUB_OFFLINE": "1",
                "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": f"{temp}/gradio",
                "PYTHONDONTWRITEBYTECODE": "1", "MALLOC_ARENA_MAX": "2",
                "MODELHALL_SANDBOXED": "1" if self.sandboxed else "0"}

    @staticmethod
    def _limits(spec: Spec, gpus: list[str]) -> Limits:
        resources = spec.resources
        return Limits(memory=resources.memory, cpus=resources.cpu, processes=resources.processes,
                      disk=resources.disk, address_space=not gpus)

    def _network(self, spec: Spec) -> bool:
        """Whether the worker gets a network (its own, never the host's loopback): only if its spec asks and
        the operator allows it (``MODELHALL_ALLOW_MODEL_NETWORK``)."""
        if not spec.runtime.network:
            return False
        if not self.allow_network:
            raise NetworkNotAllowedError("the model asks for network access (runtime.network: true), which this "
                                         "registry does not allow (its operator can, with "
                                         "MODELHALL_ALLOW_MODEL_NETWORK=true)")
        if self.sandboxed and shutil.which("slirp4netns") is None:
            raise NetworkNotAllowedError("the model asks for network access, but slirp4netns, which gives a "
                                         "sandbox a network of its own, is not installed on this machine")
        return True

    @staticmethod
    def _parts(worker: WorkerHandle) -> tuple[str, int]:
        """The worker's name (its log and sandbox folder) and the pid of its process group."""
        name, _, pid = worker.id.rpartition(":")
        return name, int(pid)

    def _is_ours(self, name: str, pid: int) -> bool:
        """Whether ``pid`` is still the worker's process, not a reused pid (an earlier registry's worker)."""
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        return f"\0--worker-id\0{name}\0".encode() in command

    def alive(self, worker: WorkerHandle) -> bool:
        name, pid = self._parts(worker)
        if pid <= 0:
            return False
        try:
            exited, _status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not our child (an earlier registry started it): ask the kernel
            return self._is_ours(name, pid)
        return exited == 0

    def stop(self, worker: WorkerHandle) -> None:
        name, pid = self._parts(worker)
        if self.alive(worker):
            os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE_SECONDS
            while time.monotonic() < deadline and self.alive(worker):
                time.sleep(0.05)
            if self.alive(worker):
                os.killpg(pid, signal.SIGKILL)
                self.alive(worker)  # reap it
        with self._sockets_lock:
            (self.sockets / f"{name}.sock").unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # other workers' sockets are still in it
                self.sockets.rmdir()
        shutil.rmtree(self.sandboxes / name, ignore_errors=True)

    def build_log(self, environment: str, lines: int = 200) -> str:
        return self.environments.log(environment, lines)

    def remove(self, target: Target) -> None:
        """Nothing is left to remove: a local worker leaves nothing behind but its process, and an
        environment belongs to a requirements hash that other versions may share."""

    def logs(self, worker: WorkerHandle, lines: int = 50) -> str:
        log = self.logs_dir / f"{self._parts(worker)[0]}.log"
        if not log.exists():
            return ""
        return "\n".join(tail_lines(log, lines))


LOG_TAIL_BYTES = 256 * 1024


def tail_lines(path: Path, lines: int) -> list[str]:
    """The last ``lines`` lines of a log a worker writes, reading at most its last 256 KiB."""
    with path.open("rb") as log:
        log.seek(max(0, log.seek(0, os.SEEK_END) - LOG_TAIL_BYTES))
        return log.read().decode(errors="replace").splitlines()[-lines:]
