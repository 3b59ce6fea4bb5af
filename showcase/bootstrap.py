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
- ``MODELHALL_ENVIRONMENT``: the digest of its environment artifact, if it needs packages the image
  lacks (built by a Job: ``build_environment.py``); fetched, verified and put on ``PYTHONPATH``
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
from modelhall.bundle import mediatypes as mt
from modelhall.bundle.unpack import extract_tar
from modelhall.client.reference import Reference
from modelhall.client.registry import RegistryClient
from modelhall.client.transfer import download_blob, fetch_manifest, pull_bundle

PRIVATE = ("MODELHALL_PULL_TOKEN", "MODELHALL_PULL_TOKEN_FILE")
# An environment may hold large frameworks; the pod's /tmp (resources.disk) bounds it too.
ENVIRONMENT_MAX_BYTES = 64 * 1024**3
ENVIRONMENT_MAX_MEMBERS = 1_000_000


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


def fetch_environment(registry_url: str, repository: str, digest: str, token: str, target: Path) -> None:
    """The version's environment artifact, by digest, its layer unpacked at ``target`` (digests checked)."""
    with RegistryClient(registry_url, None) as client:
        client.http.headers["Authorization"] = f"Bearer {token}"
        fetched = fetch_manifest(client, Reference(registry_url.rstrip("/"), repository, digest))
        if fetched.document.get("artifactType") != mt.ENVIRONMENT_ARTIFACT_TYPE:
            raise ValueError(f"{digest} is not an environment artifact")
        [layer] = fetched.document["layers"]
        path = download_blob(client, repository, layer, lambda _bytes: None)
    target.mkdir()
    with path.open("rb") as stream:
        extract_tar(stream, target, UnpackLimits(max_bytes=ENVIRONMENT_MAX_BYTES, max_members=ENVIRONMENT_MAX_MEMBERS))


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
    worker_environment = {key: value for key, value in environment.items() if key not in PRIVATE}
    if built := environment.get("MODELHALL_ENVIRONMENT"):
        packages = scratch / "environment"
        shutil.rmtree(packages, ignore_errors=True)
        print(f"fetching its environment {built}", file=sys.stderr, flush=True)
        fetch_environment(environment["MODELHALL_REGISTRY_URL"], repository, built, pull_token(environment), packages)
        worker_environment["PYTHONPATH"] = str(packages)
    listener = listen(environment.get("MODELHALL_POD_IP") or "0.0.0.0", int(environment.get("MODELHALL_PORT", "8080")))
    os.chdir(bundle)
    os.execve(sys.executable, [sys.executable, "-m", "modelhall.showcase.worker", str(bundle),
                               "--fd", str(listener.fileno()), "--worker-id", environment.get("HOSTNAME", ""),
                               "--digest", digest, "--root-path", environment.get("MODELHALL_ROOT_PATH", "")],
              worker_environment)


if __name__ == "__main__":
    main()
