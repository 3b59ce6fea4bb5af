"""Small helpers to drive the OCI API by hand in tests: upload a blob, push a manifest."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import httpx

from modelhall.bundle import PackedBundle
from modelhall.bundle import mediatypes as mt


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def http(url: str, token: str | None = None) -> httpx.Client:
    auth = httpx.BasicAuth("", token) if token else None
    return httpx.Client(base_url=url, auth=auth, timeout=30)


def error_code(response: httpx.Response) -> str:
    return response.json()["errors"][0]["code"]


def upload(client: httpx.Client, repository: str, data: bytes) -> str:
    digest = sha256(data)
    response = client.post(f"/v2/{repository}/blobs/uploads/", params={"digest": digest}, content=data)
    assert response.status_code == 201, response.text
    return digest


def image_manifest(config: bytes, layers: list[bytes], **extra: Any) -> dict[str, Any]:
    return {
        "schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.test.config+json", "digest": sha256(config), "size": len(config)},
        "layers": [{"mediaType": "application/octet-stream", "digest": sha256(layer), "size": len(layer)}
                   for layer in layers],
        **extra,
    }


def push_image(client: httpx.Client, repository: str, reference: str, config: bytes = b"{}",
               layers: tuple[bytes, ...] = (b"layer",), **extra: Any) -> tuple[str, bytes]:
    for blob in (config, *layers):
        upload(client, repository, blob)
    body = json.dumps(image_manifest(config, list(layers), **extra)).encode()
    response = client.put(f"/v2/{repository}/manifests/{reference}", content=body,
                          headers={"Content-Type": mt.OCI_MANIFEST})
    assert response.status_code == 201, response.text
    return response.headers["docker-content-digest"], body


def push_packed(client: httpx.Client, repository: str, tag: str, packed: PackedBundle) -> str:
    """Push a packed bundle blob by blob, as the CLI would; returns the manifest digest."""
    for blob in packed.blobs:
        with blob.open() as stream:
            response = client.post(f"/v2/{repository}/blobs/uploads/", params={"digest": blob.digest},
                                   content=stream.read())
        assert response.status_code == 201, response.text
    response = client.put(f"/v2/{repository}/manifests/{tag}", content=packed.manifest,
                          headers={"Content-Type": mt.OCI_MANIFEST})
    assert response.status_code == 201, response.text
    return response.headers["docker-content-digest"]
