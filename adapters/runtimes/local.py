"""The local runtime: model servers as processes on this machine, each in its version's virtualenv.

Environments come from :mod:`environments`. The platform's own packages (the model
server, Gradio, and whatever else is installed beside it) are not installed again into
every environment: a ``.pth`` file appends the platform's site-packages *after* the
environment's own. A requirement the platform already satisfies is used from there; only
the others are installed, into the environment, where they win. The platform is the
base layer, each version's own packages the increment.

    <data dir>/
    ├── environments/   built by EnvironmentBuilder
    ├── uv-cache/       shared download cache
    └── logs/<pid>.log  each worker's stdout and stderr
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sysconfig
import time
from pathlib import Path

from modelhall.adapters.runtimes.base import Build, WorkerHandle
from modelhall.adapters.runtimes.environments import (
    EnvironmentBuilder,
    EnvironmentSpec,
    default_python,
    parse_requirements,
    split_by_installed,
)
from modelhall.spec import load_spec_file

PLATFORM_PTH = "modelhall-platform.pth"
STOP_GRACE_SECONDS = 5.0


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class LocalRuntime:
    def __init__(self, data_dir: Path, host: str = "127.0.0.1", index_args: tuple[str, ...] = ()):
        self.host = host
        self.logs_dir = data_dir / "logs"
        self.environments = EnvironmentBuilder(data_dir / "environments", data_dir / "uv-cache", index_args=index_args)

    def build(self, bundle: Path) -> Build:
        spec = load_spec_file(bundle)
        if spec.package.type == "conda":
            raise ValueError("conda environments are not supported by the local runtime; use package.type: pip")
        requirements_file = bundle / spec.package.requirements if spec.package.requirements else None
        text = requirements_file.read_text() if requirements_file and requirements_file.exists() else ""
        requirements = parse_requirements(text, spec.package.requirements or "requirements.txt")
        python = spec.package.python or default_python()
        missing, provided = split_by_installed(requirements) if python == default_python() else (requirements, ())
        requested = EnvironmentSpec(python, missing, provided)
        environment = self.environments.ensure(requested)
        self._link_platform(environment.path)
        return Build(environment=environment.record.key,
                     log=(self.environments.root / f"{environment.record.key}.log").read_text(errors="replace"))

    def _link_platform(self, environment: Path) -> None:
        (site_packages,) = environment.glob("lib/python*/site-packages")
        platform = sysconfig.get_paths()["purelib"]
        (site_packages / PLATFORM_PTH).write_text(f"import site; site.addsitedir({platform!r})\n")

    def start(self, bundle: Path, build: Build, digest: str) -> WorkerHandle:
        python = self.environments.root / build.environment / "bin" / "python"
        port = free_port(self.host)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        log = self.logs_dir / f"{digest.split(':')[-1][:12]}-{port}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                [str(python), "-m", "modelhall", "runner", str(bundle), "--host", self.host, "--port", str(port),
                 "--digest", digest],
                cwd=bundle, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # outlives a registry restart, which adopts it again
                env={**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"},
            )
        return WorkerHandle(host=self.host, port=port, pid=process.pid, log=log)

    def alive(self, worker: WorkerHandle) -> bool:
        if worker.pid is None:
            return False
        try:
            pid, _status = os.waitpid(worker.pid, os.WNOHANG)
        except ChildProcessError:  # not our child (an earlier registry started it): ask the kernel
            pid = 0
            try:
                os.kill(worker.pid, 0)
            except ProcessLookupError:
                return False
        return pid == 0

    def stop(self, worker: WorkerHandle) -> None:
        if worker.pid is None or not self.alive(worker):
            return
        os.killpg(worker.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        while time.monotonic() < deadline:
            if not self.alive(worker):
                return
            time.sleep(0.05)
        os.killpg(worker.pid, signal.SIGKILL)
        self.alive(worker)  # reap it

    def logs(self, worker: WorkerHandle, lines: int = 50) -> str:
        if worker.log is None or not worker.log.exists():
            return ""
        return "\n".join(worker.log.read_text(errors="replace").splitlines()[-lines:])
