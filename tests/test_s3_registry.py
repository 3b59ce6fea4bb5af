"""The registry on S3 (a real SeaweedFS): OCI pushes and pulls with oras and skopeo, chunked uploads
across a restart, and blob GETs answered by presigned URLs only after the access rules said yes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import oras.client
import pytest

from conftest import RegistryServer, serve_registry
from oci_helpers import http, push_image, sha256
from s3_server import SeaweedFS
from test_skopeo import make_image_layout, skopeo

MiB = 1024 * 1024


def _s3_registry(s3_server: SeaweedFS, directory: Path, **query: str) -> Iterator[RegistryServer]:
    url = s3_server.storage_url(s3_server.new_bucket(), **query)
    yield from serve_registry("sqlite", directory, {"MODELHALL_STORAGE": url, **s3_server.env})


@pytest.fixture(scope="module")
def s3_registry(s3_server: SeaweedFS, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    yield from _s3_registry(s3_server, tmp_path_factory.mktemp("s3-registry"))


def oras_client(registry: RegistryServer, user: str, token: str) -> oras.client.OrasClient:
    client = oras.client.OrasClient(hostname=registry.host, insecure=True, auth_backend="token")
    client.auth.set_basic_auth(user, token)
    return client


def test_oras_push_and_pull_through_s3_are_byte_for_byte(s3_registry: RegistryServer, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    user, token = s3_registry.user()
    source = tmp_path / "src"
    source.mkdir()
    weights = os.urandom(12 * MiB + 3)  # several S3 parts and a short last one
    (source / "weights.bin").write_bytes(weights)
    (source / "notes.txt").write_text("small")
    monkeypatch.chdir(source)
    client = oras_client(s3_registry, user, token)
    client.push(target=f"{s3_registry.host}/{user}/plain:v1", files=["weights.bin", "notes.txt"])
    client.pull(target=f"{s3_registry.host}/{user}/plain:v1", outdir=str(tmp_path / "out"))
    assert (tmp_path / "out" / "weights.bin").read_bytes() == weights
    assert (tmp_path / "out" / "notes.txt").read_text() == "small"


def test_skopeo_copies_in_and_out_of_s3(s3_registry: RegistryServer, tmp_path: Path) -> None:
    user, token = s3_registry.user()
    make_image_layout(tmp_path / "layout", "v1")
    destination = f"docker://{s3_registry.host}/{user}/image:v1"
    skopeo("copy", "--dest-tls-verify=false", "--dest-creds", f"{user}:{token}", f"oci:{tmp_path / 'layout'}:v1",
           destination)
    skopeo("copy", "--src-tls-verify=false", "--src-creds", f"{user}:{token}", destination,
           f"oci:{tmp_path / 'back'}:v1")
    blobs = lambda layout: {p.name: p.read_bytes() for p in (layout / "blobs" / "sha256").iterdir()}  # noqa: E731
    assert blobs(tmp_path / "back") == blobs(tmp_path / "layout")


def test_chunked_upload_continues_after_a_restart(s3_server: SeaweedFS, tmp_path: Path) -> None:
    """Chunks under S3's 5 MiB part minimum, the registry restarted between them: nothing is kept in its memory."""
    for registry in _s3_registry(s3_server, tmp_path / "registry"):
        user, token = registry.user()
        client, data = http(registry.url, token), os.urandom(11 * MiB)
        location = client.post(f"/v2/{user}/chunked/blobs/uploads/").headers["location"]
        for number, start in enumerate(range(0, len(data), 4 * MiB)):
            chunk = data[start:start + 4 * MiB]
            patched = client.patch(location, content=chunk, headers={
                "Content-Range": f"{start}-{start + len(chunk) - 1}", "Content-Type": "application/octet-stream"})
            assert patched.status_code == 202, patched.text
            assert patched.headers["range"] == f"0-{start + len(chunk) - 1}"
            if number == 1:
                registry.restart()
                client = http(registry.url, token)
        wrong = client.put(location, params={"digest": sha256(data[:-1])})
        assert wrong.status_code == 400 and wrong.json()["errors"][0]["code"] == "DIGEST_INVALID"
        assert client.get(f"/v2/{user}/chunked/blobs/{sha256(data[:-1])}").status_code == 404

        location = client.post(f"/v2/{user}/chunked/blobs/uploads/").headers["location"]
        assert client.patch(location, content=data[:6 * MiB]).status_code == 202
        registry.restart()
        client = http(registry.url, token)
        done = client.put(location, params={"digest": sha256(data[:6 * MiB] + data[6 * MiB:])},
                          content=data[6 * MiB:])
        assert done.status_code == 201, done.text
        pulled = client.get(f"/v2/{user}/chunked/blobs/{sha256(data)}", follow_redirects=True)
        assert pulled.status_code == 200 and pulled.content == data


def test_blob_get_redirects_to_a_short_lived_presigned_url(s3_registry: RegistryServer) -> None:
    user, token = s3_registry.user()
    client = http(s3_registry.url, token)
    layer = os.urandom(100_000)
    push_image(client, f"{user}/redirected", "v1", layers=(layer,))
    answer = client.get(f"/v2/{user}/redirected/blobs/{sha256(layer)}")
    assert answer.status_code == 307 and answer.headers["cache-control"] == "no-store"
    location = answer.headers["location"]
    assert int(parse_qs(urlsplit(location).query)["X-Amz-Expires"][0]) <= 300
    assert httpx.get(location).content == layer
    assert httpx.get(location, headers={"Range": "bytes=10-19"}).content == layer[10:20]
    forged = location.replace(sha256(layer).split(":")[1], sha256(b"other").split(":")[1])
    assert httpx.get(forged).status_code == 403  # the signature covers exactly that blob
    head = client.head(f"/v2/{user}/redirected/blobs/{sha256(layer)}")
    assert head.status_code == 200 and head.headers["content-length"] == str(len(layer))


def test_private_and_hidden_weights_blobs_never_redirect(s3_registry: RegistryServer) -> None:
    """Attack: ask for a blob of a private repository, or of one whose weights are hidden, hoping
    for a presigned URL (a capability that no later check can take back)."""
    owner, owner_token = s3_registry.user("admin")
    stranger_name, stranger_token = s3_registry.user()
    owner_client, stranger = http(s3_registry.url, owner_token), http(s3_registry.url, stranger_token)
    secret_layer, hidden_layer = os.urandom(50_000), os.urandom(50_000)
    push_image(owner_client, f"{owner}/secret", "v1", layers=(secret_layer,))
    push_image(owner_client, f"{owner}/hidden", "v1", layers=(hidden_layer,))
    owner_client.patch(f"/api/v1/repos/{owner}/hidden", json={"visibility": "public", "weights": "hidden"}
                       ).raise_for_status()
    attempts = [
        (httpx.get, f"{s3_registry.url}/v2/{owner}/secret/blobs/{sha256(secret_layer)}", 401),  # anonymous
        (stranger.get, f"/v2/{owner}/secret/blobs/{sha256(secret_layer)}", 404),
        (stranger.get, f"/v2/{owner}/hidden/blobs/{sha256(hidden_layer)}", 403),
        (httpx.get, f"{s3_registry.url}/v2/{owner}/hidden/blobs/{sha256(hidden_layer)}", 401),
    ]
    for get, url, status in attempts:
        answer = get(url)
        assert answer.status_code == status, url
        assert "location" not in answer.headers and "X-Amz" not in answer.text
    # The blob is in the store, but not linked to the stranger's own repository: no URL for it there either.
    push_image(stranger, f"{stranger_name}/mine", "v1")
    answer = stranger.get(f"/v2/{stranger_name}/mine/blobs/{sha256(secret_layer)}")
    assert answer.status_code == 404 and "location" not in answer.headers


def test_redirect_false_streams_through_the_registry(s3_server: SeaweedFS, tmp_path: Path) -> None:
    for registry in _s3_registry(s3_server, tmp_path / "registry", redirect="false"):
        user, token = registry.user()
        client, layer = http(registry.url, token), os.urandom(70_000)
        push_image(client, f"{user}/streamed", "v1", layers=(layer,))
        answer = client.get(f"/v2/{user}/streamed/blobs/{sha256(layer)}", headers={"Range": "bytes=5-9"})
        assert answer.status_code == 206 and answer.content == layer[5:10]
        assert client.get(f"/v2/{user}/streamed/blobs/{sha256(layer)}").content == layer
