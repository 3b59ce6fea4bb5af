"""What the model-server image's entrypoint does, for the OpenFaaS gateway double's replicas.

A stand-in for the image's bootstrap (to be replaced by the real one once it lands): it reads the
function's environment (the contract in ``adapters/runtimes/openfaas.py``) and its pull secret, pulls
the version's manifest and blobs by digest from the registry with that credential only, checks each
digest, unpacks the bundle with Modelhall's own unpacker, then serves it on ``$port`` with the model
server. The environment is the platform's (the test bundles need no packages of their own).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import httpx

from modelhall.bundle import UnpackLimits, unpack_layers
from modelhall.bundle.unpack import IteratorReader

MANIFEST_TYPES = "application/vnd.oci.image.manifest.v1+json"


def pull(client: httpx.Client, repository: str, digest: str, target: Path) -> None:
    response = client.get(f"/v2/{repository}/manifests/{digest}", headers={"Accept": MANIFEST_TYPES})
    response.raise_for_status()
    if "sha256:" + hashlib.sha256(response.content).hexdigest() != digest:
        raise SystemExit("the registry answered a manifest of another digest")
    manifest = json.loads(response.content)

    @contextmanager
    def open_blob(blob: str) -> Iterator[BinaryIO]:
        with client.stream("GET", f"/v2/{repository}/blobs/{blob}") as answer:
            answer.raise_for_status()
            yield IteratorReader(answer.iter_bytes())  # type: ignore[misc]

    unpack_layers(manifest, open_blob, target, UnpackLimits())


def main() -> None:
    env = os.environ
    secret = Path(env["MODELHALL_SECRETS_DIR"]) / env["MODELHALL_PULL_SECRET"]
    token = secret.read_text().strip()
    bundle = Path(tempfile.mkdtemp(prefix="bundle-")) / "bundle"
    with httpx.Client(base_url=env["MODELHALL_REGISTRY_URL"], headers={"Authorization": f"Bearer {token}"},
                      timeout=60) as client:
        pull(client, env["MODELHALL_REPOSITORY"], env["MODELHALL_DIGEST"], bundle)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", int(env["port"])))
    listener.listen(128)
    os.set_inheritable(listener.fileno(), True)
    os.chdir(bundle)
    os.execv(sys.executable, [sys.executable, "-m", "modelhall.showcase.worker", str(bundle),
                              "--fd", str(listener.fileno()), "--digest", env["MODELHALL_DIGEST"],
                              "--root-path", env["MODELHALL_ROOT_PATH"]])


if __name__ == "__main__":
    main()
