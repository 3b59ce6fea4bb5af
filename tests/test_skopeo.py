"""skopeo (containers/image) against the registry: copy an OCI layout in and out, list tags."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from conftest import RegistryServer, require_tool
from modelhall.bundle import mediatypes as mt
from modelhall.bundle import pack_bundle
from oci_helpers import http, push_packed, sha256

TEMPLATE = Path(__file__).resolve().parent.parent / "templates" / "hello"


def write_blob(layout: Path, data: bytes) -> dict[str, object]:
    path = layout / "blobs" / "sha256" / sha256(data).split(":")[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"digest": sha256(data), "size": len(data)}


def make_image_layout(layout: Path, tag: str) -> str:
    """A one-layer linux image as an OCI image layout; returns its manifest digest."""
    layer_tar = io.BytesIO()
    with tarfile.open(fileobj=layer_tar, mode="w") as archive:
        info = tarfile.TarInfo("hello.txt")
        content = b"hello from an OCI layout\n"
        info.size = len(content)
        archive.addfile(info, io.BytesIO(content))
    diff_id = sha256(layer_tar.getvalue())
    layer = write_blob(layout, gzip.compress(layer_tar.getvalue(), mtime=0))
    config = write_blob(layout, json.dumps({
        "architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "config": {"Cmd": ["cat", "/hello.txt"]}}).encode())
    manifest_bytes = json.dumps({
        "schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
        "layers": [{"mediaType": mt.OCI_LAYER_TAR_GZIP, **layer}],
    }).encode()
    manifest = write_blob(layout, manifest_bytes)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": mt.OCI_MANIFEST, **manifest, "annotations": {"org.opencontainers.image.ref.name": tag}}]}))
    return str(manifest["digest"])


def skopeo(*args: str) -> str:
    result = subprocess.run(["skopeo", "--insecure-policy", *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(autouse=True)
def _skopeo_installed() -> None:
    require_tool("skopeo", "apt-get install skopeo")


def test_copy_layout_to_registry_and_back(registry: RegistryServer, tmp_path: Path) -> None:
    user, token = registry.user()
    digest = make_image_layout(tmp_path / "layout", "v1")
    destination = f"docker://{registry.host}/{user}/image:v1"
    skopeo("copy", "--dest-tls-verify=false", "--dest-creds", f"{user}:{token}", f"oci:{tmp_path / 'layout'}:v1",
           destination)
    skopeo("copy", "--src-tls-verify=false", "--src-creds", f"{user}:{token}", destination,
           f"oci:{tmp_path / 'back'}:v1")
    index = json.loads((tmp_path / "back" / "index.json").read_text())
    assert index["manifests"][0]["digest"] == digest
    for blob in (tmp_path / "layout" / "blobs" / "sha256").iterdir():
        assert (tmp_path / "back" / "blobs" / "sha256" / blob.name).read_bytes() == blob.read_bytes()


def test_list_tags_and_inspect(registry: RegistryServer, tmp_path: Path) -> None:
    user, token = registry.user()
    make_image_layout(tmp_path / "layout", "v1")
    for tag in ("v1", "v2", "latest"):
        skopeo("copy", "--dest-tls-verify=false", "--dest-creds", f"{user}:{token}", f"oci:{tmp_path / 'layout'}:v1",
               f"docker://{registry.host}/{user}/tagged:{tag}")
    listed = json.loads(skopeo("list-tags", "--tls-verify=false", "--creds", f"{user}:{token}",
                               f"docker://{registry.host}/{user}/tagged"))
    assert sorted(listed["Tags"]) == ["latest", "v1", "v2"]
    inspected = json.loads(skopeo("inspect", "--tls-verify=false", "--creds", f"{user}:{token}",
                                  f"docker://{registry.host}/{user}/tagged:v2"))
    assert (inspected["Os"], inspected["Architecture"]) == ("linux", "amd64")


def test_skopeo_without_credentials_cannot_see_a_private_repository(registry: RegistryServer, tmp_path: Path) -> None:
    user, token = registry.user()
    make_image_layout(tmp_path / "layout", "v1")
    skopeo("copy", "--dest-tls-verify=false", "--dest-creds", f"{user}:{token}", f"oci:{tmp_path / 'layout'}:v1",
           f"docker://{registry.host}/{user}/secret:v1")
    result = subprocess.run(["skopeo", "list-tags", "--tls-verify=false", f"docker://{registry.host}/{user}/secret"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "404 (Not Found)" in result.stderr


def test_skopeo_copies_a_bundle_between_repositories_keeping_its_digest(registry: RegistryServer,
                                                                       tmp_path: Path) -> None:
    user, token = registry.user()
    client = http(registry.url, token)
    with pack_bundle(TEMPLATE) as packed:
        digest = push_packed(client, f"{user}/bundle", "v1", packed)
    creds = f"{user}:{token}"
    skopeo("copy", "--src-tls-verify=false", "--src-creds", creds, f"docker://{registry.host}/{user}/bundle:v1",
           f"oci:{tmp_path / 'bundle'}:v1")
    skopeo("copy", "--dest-tls-verify=false", "--dest-creds", creds, f"oci:{tmp_path / 'bundle'}:v1",
           f"docker://{registry.host}/{user}/bundle-copy:v1")
    copied = client.get(f"/api/v1/repos/{user}/bundle-copy/versions/v1").json()
    assert copied["digest"] == digest
    assert copied["spec"]["name"] == "hello"
