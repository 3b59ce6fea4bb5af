"""The REST API the gallery and CLI use: repositories, versions, specs, README, search, settings."""

from __future__ import annotations

from pathlib import Path

import httpx

from conftest import RegistryServer
from modelhall.bundle import pack_bundle
from oci_helpers import http, push_image, push_packed

TEMPLATE = Path(__file__).resolve().parent.parent / "templates" / "hello"


def test_pushed_bundle_is_indexed_with_spec_and_readme(registry: RegistryServer) -> None:
    user, token = registry.user()
    client = http(registry.url, token)
    with pack_bundle(TEMPLATE) as packed:
        digest = push_packed(client, f"{user}/hello", "v1", packed)
        total = len(packed.manifest) + sum(blob.size for blob in packed.blobs)
    repository = client.get(f"/api/v1/repos/{user}/hello").json()
    assert repository["description"].startswith("Greets whoever you name")
    assert repository["task"] is None  # hello is an example, not a text-generation model
    assert repository["latest"] | {"pushed_at": None} == {"tag": "v1", "digest": digest, "version": "0.1.0",
                                                         "size": total, "pushed_at": None}
    version = client.get(f"/api/v1/repos/{user}/hello/versions/v1").json()
    assert version["spec"]["inputs"][1] == {"name": "style", "type": "choice", "choices": ["plain", "excited"],
                                            "default": "plain", "multiple": False, "required": True}
    assert version["readme"].startswith("---\nlicense: apache-2.0")
    assert version["annotations"]["org.opencontainers.image.version"] == "0.1.0"
    assert client.get(f"/api/v1/repos/{user}/hello/versions/v9").status_code == 404


def test_versions_are_listed_newest_first(registry: RegistryServer) -> None:
    user, token = registry.user()
    client = http(registry.url, token)
    push_image(client, f"{user}/versions", "v1", layers=(b"one",))
    push_image(client, f"{user}/versions", "v2", layers=(b"two",))
    tags = [v["tag"] for v in client.get(f"/api/v1/repos/{user}/versions/versions").json()]
    assert tags == ["v2", "v1"]
    assert client.get(f"/api/v1/repos/{user}/versions/versions/v1").json()["spec"] is None  # not a bundle


def test_search_and_namespace_filter(registry: RegistryServer) -> None:
    user, token = registry.user()
    client = http(registry.url, token)
    push_image(client, f"{user}/zebra-maker", "v1")
    push_image(client, f"{user}/other", "v1")
    client.patch(f"/api/v1/repos/{user}/zebra-maker", json={"description": "stripes on horses"}).raise_for_status()
    found = [r["name"] for r in client.get("/api/v1/repos", params={"q": "STRIPES"}).json()]
    assert found == [f"{user}/zebra-maker"]
    mine = sorted(r["name"] for r in client.get("/api/v1/repos", params={"namespace": user}).json())
    assert mine == [f"{user}/other", f"{user}/zebra-maker"]


def test_invalid_settings_are_refused_with_the_field(registry: RegistryServer) -> None:
    user, token = registry.user()
    client = http(registry.url, token)
    push_image(client, f"{user}/settings", "v1")
    response = client.patch(f"/api/v1/repos/{user}/settings", json={"visibility": "everyone"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "visibility"]
    assert client.get(f"/api/v1/repos/{user}/settings").json()["visibility"] == "private"


def test_openapi_document_describes_the_api(registry: RegistryServer) -> None:
    document = httpx.get(f"{registry.url}/openapi.json").json()
    for path in ("/api/v1/repos", "/api/v1/repos/{name}", "/api/v1/repos/{name}/versions/{tag}", "/token"):
        assert path in document["paths"], path
    assert "RepositoryOut" in document["components"]["schemas"]
