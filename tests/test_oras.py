"""The real ``oras`` client against the registry: push, pull, indexing of plain oras pushes, concurrency."""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import oras.client
import pytest

from conftest import RegistryServer
from modelhall.bundle import mediatypes as mt
from modelhall.bundle import pack_bundle
from oci_helpers import http, push_packed, sha256

TEMPLATE = Path(__file__).resolve().parent.parent / "templates" / "hello"


def oras_client(registry: RegistryServer, user: str | None = None, token: str | None = None) -> oras.client.OrasClient:
    client = oras.client.OrasClient(hostname=registry.host, insecure=True, auth_backend="token")
    if token:
        client.auth.set_basic_auth(user or "", token)
    return client


def files_in(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_oras_pushes_files_and_pulls_them_back_identical(registry: RegistryServer, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    user, token = registry.user()
    source = tmp_path / "src"
    source.mkdir()
    (source / "weights.bin").write_bytes(os.urandom(200_000))
    (source / "notes.txt").write_text("not a bundle")
    monkeypatch.chdir(source)
    client = oras_client(registry, user, token)
    client.push(target=f"{registry.host}/{user}/plain:v1", files=["weights.bin", "notes.txt"])
    pulled = client.pull(target=f"{registry.host}/{user}/plain:v1", outdir=str(tmp_path / "out"))
    assert sorted(Path(p).name for p in pulled) == ["notes.txt", "weights.bin"]
    assert files_in(tmp_path / "out") == files_in(source)
    version = http(registry.url, token).get(f"/api/v1/repos/{user}/plain/versions/v1").json()
    assert version["spec"] is None  # no modelhall.yaml: stored, but not a bundle


def test_oras_push_of_bundle_files_is_indexed(registry: RegistryServer, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    user, token = registry.user()
    bundle = tmp_path / "hello"
    shutil.copytree(TEMPLATE, bundle)
    monkeypatch.chdir(bundle)
    oras_client(registry, user, token).push(target=f"{registry.host}/{user}/via-oras:v1",
                                            files=["modelhall.yaml", "predict.py", "README.md"])
    version = http(registry.url, token).get(f"/api/v1/repos/{user}/via-oras/versions/v1").json()
    assert version["spec"]["name"] == "hello"
    assert version["spec"]["runtime"]["entrypoint"] == "predict.py:predict"
    assert version["readme"].startswith("---\nlicense: apache-2.0")


def test_oras_push_of_a_bundle_folder_is_indexed(registry: RegistryServer, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    user, token = registry.user()
    shutil.copytree(TEMPLATE, tmp_path / "hello")
    monkeypatch.chdir(tmp_path)
    oras_client(registry, user, token).push(target=f"{registry.host}/{user}/folder:v1", files=["hello"])
    version = http(registry.url, token).get(f"/api/v1/repos/{user}/folder/versions/v1").json()
    assert (version["spec"]["name"], version["version"]) == ("hello", "0.1.0")
    assert "# hello" in version["readme"]


def test_oras_push_with_an_invalid_spec_is_refused_naming_the_field(registry: RegistryServer, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    user, token = registry.user()
    (tmp_path / "modelhall.yaml").write_text("name: broken\nruntime: {adapter: python, entrypoint: p.py:f}\n"
                                             "inputs:\n  - {name: photo, type: picture}\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="bad/manifests/v1: Bad Request"):
        oras_client(registry, user, token).push(target=f"{registry.host}/{user}/bad:v1", files=["modelhall.yaml"])
    response = http(registry.url, token).put(f"/v2/{user}/bad/manifests/v1", content=_manifest_for(
        registry, token, user, tmp_path / "modelhall.yaml"), headers={"Content-Type": mt.OCI_MANIFEST})
    detail = response.json()["errors"][0]
    assert detail["code"] == "MANIFEST_INVALID"
    assert "modelhall.yaml:4: inputs[0].type: 'picture' is not one of text" in detail["detail"]
    assert http(registry.url, token).get(f"/v2/{user}/bad/manifests/v1").status_code == 404


def _manifest_for(registry: RegistryServer, token: str, user: str, spec_file: Path) -> bytes:
    """The manifest oras would have sent: the spec file as a titled layer, with an empty config."""
    data = spec_file.read_bytes()
    client = http(registry.url, token)
    for blob in (data, b"{}"):
        client.post(f"/v2/{user}/bad/blobs/uploads/", params={"digest": sha256(blob)}, content=blob)
    return json.dumps({
        "schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": mt.OCI_EMPTY_JSON, "digest": sha256(b"{}"), "size": 2},
        "layers": [{"mediaType": mt.OCI_LAYER_TAR, "digest": sha256(data), "size": len(data),
                    "annotations": {mt.ANNOTATION_TITLE: "modelhall.yaml"}}],
    }).encode()


def test_oras_pulls_a_bundle_pushed_by_modelhall(registry: RegistryServer, tmp_path: Path) -> None:
    user, token = registry.user()
    with pack_bundle(TEMPLATE) as packed, http(registry.url, token) as client:
        push_packed(client, f"{user}/hello", "v1", packed)
        expected_weights = (TEMPLATE / "weights" / "greetings.json").read_bytes()
    oras_client(registry, user, token).pull(target=f"{registry.host}/{user}/hello:v1", outdir=str(tmp_path / "out"))
    assert (tmp_path / "out" / "weights" / "greetings.json").read_bytes() == expected_weights
    assert (tmp_path / "out" / "code.tar.gz").stat().st_size == packed.layers[0].size


def test_concurrent_pushes_sharing_weights_all_succeed(registry: RegistryServer, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    user, token = registry.user()
    shared = os.urandom(2_000_000)
    for index in range(6):
        version = tmp_path / f"v{index}"
        version.mkdir()
        (version / "shared.bin").write_bytes(shared)
        (version / "own.txt").write_text(f"version {index}")
    monkeypatch.chdir(tmp_path)

    def push(index: int) -> None:
        oras_client(registry, user, token).push(
            target=f"{registry.host}/{user}/shared:v{index}", files=[f"v{index}/shared.bin", f"v{index}/own.txt"])

    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(push, range(6)))
    client = http(registry.url, token)
    assert client.get(f"/v2/{user}/shared/tags/list").json()["tags"] == [f"v{i}" for i in range(6)]
    for index in range(6):
        manifest = client.get(f"/v2/{user}/shared/manifests/v{index}").json()
        for layer in manifest["layers"]:
            blob = client.get(f"/v2/{user}/shared/blobs/{layer['digest']}")
            assert sha256(blob.content) == layer["digest"]
    assert client.head(f"/v2/{user}/shared/blobs/{sha256(shared)}").status_code == 200


def test_anonymous_oras_pull_of_public_and_private(registry: RegistryServer, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    user, token = registry.user()
    (tmp_path / "a.txt").write_text("hello")
    monkeypatch.chdir(tmp_path)
    for name in ("open", "closed"):  # a client per push, as per `oras push` run: oras-py keeps one token
        oras_client(registry, user, token).push(target=f"{registry.host}/{user}/{name}:v1", files=["a.txt"])
    http(registry.url, token).patch(f"/api/v1/repos/{user}/open", json={"visibility": "public"}).raise_for_status()
    pulled = oras_client(registry).pull(target=f"{registry.host}/{user}/open:v1", outdir=str(tmp_path / "public"))
    assert Path(pulled[0]).read_text() == "hello"
    with pytest.raises(ValueError, match="closed/manifests/v1: Not Found"):
        oras_client(registry).pull(target=f"{registry.host}/{user}/closed:v1", outdir=str(tmp_path / "private"))
    assert not (tmp_path / "private" / "a.txt").exists()
    stranger_name, stranger_token = registry.user()
    stranger = oras_client(registry, stranger_name, stranger_token)
    with pytest.raises(ValueError, match="closed/manifests/v1: Not Found"):
        stranger.pull(target=f"{registry.host}/{user}/closed:v1", outdir=str(tmp_path / "stranger"))
    assert httpx.get(f"{registry.url}/v2/{user}/open/tags/list").json()["tags"] == ["v1"]


def test_one_oras_client_pushes_to_two_repositories_and_pulls_both(registry: RegistryServer, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Its registry token names the first repository; the second one's challenge gets it a wider token."""
    user, token = registry.user()
    (tmp_path / "weights.bin").write_bytes(os.urandom(50_000))
    monkeypatch.chdir(tmp_path)
    client = oras_client(registry, user, token)
    for name in ("a", "b"):
        client.push(target=f"{registry.host}/{user}/{name}:v1", files=["weights.bin"])
    for name in ("a", "b"):
        pulled = client.pull(target=f"{registry.host}/{user}/{name}:v1", outdir=str(tmp_path / name))
        assert Path(pulled[0]).read_bytes() == (tmp_path / "weights.bin").read_bytes()
