"""The model-server image's entry: ``python -m modelhall.showcase.bootstrap``.

A pod of a version (see ``adapters/runtimes/kubernetes.py``) starts here. It fetches its bundle by
digest from the registry, verifying every byte, with the version pull token in its environment (a
credential for that one version and nothing else), unpacks it under ``/tmp`` (the only writable place:
the root filesystem is read-only), then *becomes* the model server (``exec``), answering HTTP on
``MODELHALL_POD_IP:MODELHALL_PORT`` with ``/healthz`` for the kubelet's probes. The token is not in the
model server's environment: the author's code never sees it.

Environment:

- ``MODELHALL_REGISTRY_URL``: the registry as pods reach it (its in-cluster Service)
- ``MODELHALL_REPOSITORY``, ``MODELHALL_DIGEST``: the version
- ``MODELHALL_PULL_TOKEN``: the version pull token (from the version's Secret), or
  ``MODELHALL_PULL_TOKEN_FILE``: the file that holds it (an OpenFaaS function's secret)
- ``MODELHALL_ROOT_PATH``: the demo's public path prefix behind the gateway
- ``MODELHALL_POD_IP`` (default ``0.0.0.0``), ``MODELHALL_PORT`` (default 8080): where to listen
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

from rich.console import Console

from modelhall.bundle import UnpackLimits
from modelhall.client.reference import Reference
from modelhall.client.registry import RegistryClient
from modelhall.client.transfer import pull_bundle

PRIVATE = ("MODELHALL_PULL_TOKEN", "MODELHALL_PULL_TOKEN_FILE")


def pull_token(environment: os._Environ[str]) -> str:
    """The version pull token: in the environment (Kubernetes), or in the secret file it names (OpenFaaS)."""
    token = environment.get("MODELHALL_PULL_TOKEN")
    return token if token is not None else Path(environment["MODELHALL_PULL_TOKEN_FILE"]).read_text().strip()


def fetch(registry_url: str, repository: str, digest: str, token: str, target: Path) -> None:
    """The version's bundle, by digest, unpacked at ``target`` (every blob's digest checked)."""
    reference = Reference(registry_url.rstrip("/"), repository, digest)
    with RegistryClient(registry_url, None) as client:
        client.http.headers["Authorization"] = f"Bearer {token}"
        pull_bundle(client, reference, target, Console(stderr=True, force_terminal=False), UnpackLimits())


def listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # accepted connections inherit it: without it, an answer written in two parts waits for the caller's
    # delayed ACK (about 40 ms on Linux) on every warm prediction
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    listener.bind((host, port))
    listener.listen(128)
    listener.set_inheritable(True)
    return listener


def main() -> None:
    environment = os.environ
    digest, repository = environment["MODELHALL_DIGEST"], environment["MODELHALL_REPOSITORY"]
    scratch = Path(environment.get("TMPDIR") or tempfile.gettempdir())
    os.environ.setdefault("MODELHALL_CACHE_DIR", str(scratch / "modelhall-cache"))
    bundle = scratch / "bundle"
    shutil.rmtree(bundle, ignore_errors=True)  # /tmp outlives a container restart (an emptyDir): fetch afresh
    print(f"fetching {repository}@{digest}", file=sys.stderr, flush=True)
    fetch(environment["MODELHALL_REGISTRY_URL"], repository, digest, pull_token(environment), bundle)
    listener = listen(environment.get("MODELHALL_POD_IP") or "0.0.0.0", int(environment.get("MODELHALL_PORT", "8080")))
    worker_environment = {key: value for key, value in environment.items() if key not in PRIVATE}
    os.chdir(bundle)
    os.execve(sys.executable, [sys.executable, "-m", "modelhall.showcase.worker", str(bundle),
                               "--fd", str(listener.fileno()), "--worker-id", environment.get("HOSTNAME", ""),
                               "--digest", digest, "--root-path", environment.get("MODELHALL_ROOT_PATH", "")],
              worker_environment)


if __name__ == "__main__":
    main()
