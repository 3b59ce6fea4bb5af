"""The runtime protocol: build a version's environment, run its model servers, stop them.

A runtime knows processes (or pods), not policy: *when* to wake or stop a deployment is
decided by the registry (``registry/deployments.py``), which keeps that state in the
database. Contract:

- ``build`` is idempotent: the same bundle and requirements give the same environment.
- ``start`` returns at once with a handle; the worker is ready when its ``/healthz`` says so.
- ``alive`` and ``stop`` work on handles from an earlier registry process too (pid and
  socket are enough), so a restarted registry can adopt or clean up the workers it finds.
- A worker answers HTTP on a Unix socket, not a TCP port: a sandboxed worker has no
  network at all, and only what can open the socket file can reach it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


class UnschedulableError(RuntimeError):
    """The runtime has nowhere to run this worker now (no GPU free); a state, not a crash."""


@dataclass(frozen=True)
class WorkerHandle:
    socket: Path
    pid: int | None
    log: Path | None = None


@dataclass(frozen=True)
class Build:
    environment: str
    log: str


class Runtime(Protocol):
    def build(self, bundle: Path) -> Build: ...

    def start(self, bundle: Path, build: Build, digest: str, root_path: str) -> WorkerHandle:
        """Start a worker; ``root_path`` is the public path prefix its demo is served under."""

    def alive(self, worker: WorkerHandle) -> bool: ...

    def stop(self, worker: WorkerHandle) -> None: ...

    def logs(self, worker: WorkerHandle, lines: int = 50) -> str: ...

    def build_log(self, environment: str, lines: int = 200) -> str: ...

    def journal(self, worker: WorkerHandle) -> Path:
        """Where the worker's run journal (one JSON line per prediction) can be read from here."""

    def worker_file(self, worker: WorkerHandle, path: str) -> Path:
        """A file the worker names by its own path (``/tmp/…`` in a sandbox), as a path readable here."""
