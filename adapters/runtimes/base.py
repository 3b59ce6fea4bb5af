"""The runtime protocol: build a version's environment, run its model servers, stop them.

A runtime knows processes (or pods), not policy: *when* to wake or stop a deployment is
decided by the registry (``registry/deployments.py``), which keeps that state in the
database. Contract:

- ``build`` is idempotent: the same bundle and requirements give the same environment.
- ``start`` returns a handle once the worker has an endpoint: at once for a local process, once its pod
  is Ready (or has given up starting) in a cluster; the worker is ready when its ``/healthz`` says so.
- A handle is an opaque id (the runtime's own: a process here, a pod in a cluster) and the
  endpoint the worker answers HTTP on (``unix:/path`` here, ``http://pod-address:port`` in a
  cluster). ``alive`` and ``stop`` work on handles from an earlier registry process too, so
  a restarted registry can adopt or clean up the workers it finds.
- Everything the registry learns from a worker (health, its run journal, the files of its
  runs) comes over that endpoint, bounded and validated (``registry/runs.py``): the registry
  never opens a path that a worker names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


class UnschedulableError(RuntimeError):
    """The runtime has nowhere to run this worker now (no GPU free); a state, not a crash."""


@dataclass(frozen=True)
class WorkerHandle:
    id: str  # opaque: only the runtime that made it reads it
    endpoint: str  # unix:/path/to/socket or http://host:port

    @property
    def unix_socket(self) -> str | None:
        return self.endpoint.removeprefix("unix:") if self.endpoint.startswith("unix:") else None


@dataclass(frozen=True)
class Target:
    """The version a worker serves: the repository (its id, for labels; its name, for pulling) and the digest."""

    repository_id: int
    repository: str
    digest: str


@dataclass(frozen=True)
class Build:
    environment: str
    log: str
    artifact: str | None = None  # a cluster runtime's: the digest of the environment artifact its pods fetch


class EnvironmentArtifacts(Protocol):
    """The registry's record of built environments, for runtimes that build them in the cluster."""

    def find(self, key: str, repository: str) -> str | None:
        """The digest of the environment artifact built for ``key``, recorded in ``repository``."""


class Runtime(Protocol):
    def build(self, bundle: Path, target: Target) -> Build:
        """The environment ``target`` (the version, unpacked at ``bundle``) runs in."""

    def start(self, bundle: Path, build: Build, target: Target, root_path: str) -> WorkerHandle:
        """Start a worker; ``root_path`` is the public path prefix its demo is served under."""

    def alive(self, worker: WorkerHandle) -> bool: ...

    def stop(self, worker: WorkerHandle) -> None: ...

    def logs(self, worker: WorkerHandle, lines: int = 50) -> str: ...

    def build_log(self, environment: str, lines: int = 200) -> str: ...

    def remove(self, target: Target) -> None:
        """Forget what the runtime keeps for a deleted version beyond its workers (which the registry has
        stopped): a cluster's Deployment and what it owns, a function and its secret."""
