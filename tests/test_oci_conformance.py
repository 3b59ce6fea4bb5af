"""What OCI clients expect beyond the happy path: scope challenges for registry tokens on every
route, distribution-spec v1.1.1 answers for invalid references, cross-repository mounts."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

from conftest import RegistryServer
from modelhall.bundle import mediatypes as mt
from oci_helpers import error_code, http, image_manifest, push_image, sha256, upload


def registry_token(registry: RegistryServer, user: str, token: str, *scopes: str) -> dict[str, str]:
    issued = httpx.get(f"{registry.url}/token", params={"service": "modelhall", "scope": " ".join(scopes)},
                       auth=(user, token))
    assert issued.status_code == 200, issued.text
    return {"Authorization": f"Bearer {issued.json()['token']}"}


def expected_challenge(registry: RegistryServer, name: str, actions: str) -> str:
    return (f'Bearer realm="{registry.url}/token",service="modelhall",'
            f'scope="repository:{name}:{actions}",error="insufficient_scope"')


def every_route(name: str, digest: str) -> list[tuple[str, str, str, bytes | None]]:
    """(method, path, challenged actions, body) for each OCI route on repository ``name``."""
    session = f"/v2/{name}/blobs/uploads/{uuid.uuid4()}"
    manifest = json.dumps(image_manifest(b"{}", [b"layer"])).encode()
    return [
        ("HEAD", f"/v2/{name}/blobs/{digest}", "pull", None),
        ("GET", f"/v2/{name}/blobs/{digest}", "pull", None),
        ("HEAD", f"/v2/{name}/manifests/v1", "pull", None),
        ("GET", f"/v2/{name}/manifests/v1", "pull", None),
        ("GET", f"/v2/{name}/tags/list", "pull", None),
        ("GET", f"/v2/{name}/referrers/{digest}", "pull", None),
        ("POST", f"/v2/{name}/blobs/uploads/", "pull,push", None),
        ("POST", f"/v2/{name}/blobs/uploads/?digest={sha256(b'x')}", "pull,push", b"x"),
        ("PATCH", session, "pull,push", b"x"),
        ("PUT", f"{session}?digest={sha256(b'x')}", "pull,push", b"x"),
        ("GET", session, "pull,push", None),
        ("DELETE", session, "pull,push", None),
        ("PUT", f"/v2/{name}/manifests/v2", "pull,push", manifest),
        ("DELETE", f"/v2/{name}/manifests/v1", "delete", None),
        ("DELETE", f"/v2/{name}/blobs/{digest}", "delete", None),
    ]


@pytest.mark.parametrize("target_exists", [True, False], ids=["existing", "not-yet-created"])
def test_a_token_for_one_repository_is_challenged_on_every_route_of_another(
        registry: RegistryServer, target_exists: bool) -> None:
    user, token = registry.user()
    client = http(registry.url, token)
    digest, _ = push_image(client, f"{user}/a", "v1")
    if target_exists:
        push_image(client, f"{user}/b", "v1")
    bearer = httpx.Client(base_url=registry.url, headers=registry_token(registry, user, token,
                                                                        f"repository:{user}/a:pull,push"))
    for method, path, actions, body in every_route(f"{user}/b", sha256(b"layer")):
        response = bearer.request(method, path, content=body)
        assert response.status_code == 401, (method, path, response.status_code, response.text)
        assert response.headers["www-authenticate"] == expected_challenge(registry, f"{user}/b", actions), path
    existing = client.get(f"/v2/{user}/b/tags/list")
    assert existing.status_code == (200 if target_exists else 404)  # a refused POST created nothing


def test_a_token_presented_again_after_its_challenge_gets_403_so_oras_py_refreshes(registry: RegistryServer) -> None:
    user, token = registry.user()
    push_image(http(registry.url, token), f"{user}/a", "v1")
    bearer = registry_token(registry, user, token, f"repository:{user}/a:pull")
    first = httpx.head(f"{registry.url}/v2/{user}/b/blobs/{sha256(b'layer')}", headers=bearer)
    again = httpx.head(f"{registry.url}/v2/{user}/b/blobs/{sha256(b'layer')}", headers=bearer)
    assert (first.status_code, again.status_code) == (401, 403)
    assert again.headers["www-authenticate"] == first.headers["www-authenticate"] == expected_challenge(
        registry, f"{user}/b", "pull")
    wider = registry_token(registry, user, token, f"repository:{user}/b:pull,push")
    assert httpx.post(f"{registry.url}/v2/{user}/b/blobs/uploads/", headers=wider).status_code == 202


def test_rights_that_fall_short_stay_404_and_a_challenge_names_only_what_was_asked(registry: RegistryServer) -> None:
    owner, owner_token = registry.user()
    push_image(http(registry.url, owner_token), f"{owner}/private", "v1")
    stranger, stranger_token = registry.user()
    push_image(http(registry.url, stranger_token), f"{stranger}/mine", "v1")
    bearer = httpx.Client(base_url=registry.url, headers=registry_token(
        registry, stranger, stranger_token, f"repository:{stranger}/mine:pull,push", f"repository:{owner}/private:pull"))
    for method, path, _actions, body in every_route(f"{owner}/private", sha256(b"layer")):
        response = bearer.request(method, path, content=body)
        assert response.status_code == 404, (method, path, response.status_code)
        assert "www-authenticate" not in response.headers
        assert owner not in response.text
    elsewhere = bearer.get(f"/v2/{stranger}/other/tags/list")
    assert elsewhere.status_code == 401
    assert f"repository:{stranger}/other:pull" in elsewhere.headers["www-authenticate"]
    assert owner not in elsewhere.headers["www-authenticate"]


@pytest.mark.parametrize("method", ["GET", "HEAD", "DELETE"])
def test_a_manifest_reference_that_is_neither_tag_nor_digest_is_unknown(registry: RegistryServer, method: str) -> None:
    user, token = registry.user()
    client = http(registry.url, token)
    push_image(client, f"{user}/refs", "v1")
    for reference in (".INVALID_MANIFEST_NAME", "sha256:not-hex", "-dash"):
        response = client.request(method, f"/v2/{user}/refs/manifests/{reference}")
        assert response.status_code == 404, (reference, response.status_code)
        if method != "HEAD":
            assert error_code(response) == "MANIFEST_UNKNOWN"
    assert client.get(f"/v2/{user}/refs/manifests/v1").status_code == 200


def test_a_push_to_an_invalid_tag_is_tag_invalid_and_stores_nothing(registry: RegistryServer) -> None:
    user, token = registry.user()
    client = http(registry.url, token)
    push_image(client, f"{user}/tags", "v1")
    body = json.dumps(image_manifest(b"{}", [b"layer"])).encode()
    response = client.put(f"/v2/{user}/tags/manifests/.INVALID", content=body, headers={"Content-Type": mt.OCI_MANIFEST})
    assert (response.status_code, error_code(response)) == (400, "TAG_INVALID")
    assert client.get(f"/v2/{user}/tags/tags/list").json()["tags"] == ["v1"]


def test_a_cross_repository_mount_the_token_covers_is_created(registry: RegistryServer) -> None:
    user, token = registry.user()
    digest = upload(http(registry.url, token), f"{user}/source", b"shared weights")
    bearer = registry_token(registry, user, token, f"repository:{user}/target:pull,push",
                            f"repository:{user}/source:pull")
    mounted = httpx.post(f"{registry.url}/v2/{user}/target/blobs/uploads/", params={"mount": digest,
                         "from": f"{user}/source"}, headers=bearer)
    assert mounted.status_code == 201, mounted.text
    assert mounted.headers["location"] == f"/v2/{user}/target/blobs/{digest}"
    assert mounted.headers["docker-content-digest"] == digest
    assert httpx.get(f"{registry.url}/v2/{user}/target/blobs/{digest}", headers=bearer).content == b"shared weights"


def test_a_mount_the_token_does_not_cover_falls_back_to_an_upload(registry: RegistryServer) -> None:
    user, token = registry.user()
    digest = upload(http(registry.url, token), f"{user}/source", b"covered only for the target")
    bearer = registry_token(registry, user, token, f"repository:{user}/target:pull,push")
    response = httpx.post(f"{registry.url}/v2/{user}/target/blobs/uploads/", params={"mount": digest,
                          "from": f"{user}/source"}, headers=bearer)
    assert response.status_code == 202 and "/blobs/uploads/" in response.headers["location"]
    assert httpx.head(f"{registry.url}/v2/{user}/target/blobs/{digest}", headers=bearer).status_code == 404


def test_a_mount_without_from_finds_the_blob_in_the_namespace_only(registry: RegistryServer) -> None:
    user, token = registry.user()
    client = http(registry.url, token)
    digest = upload(client, f"{user}/first", b"in my namespace")
    mounted = client.post(f"/v2/{user}/second/blobs/uploads/", params={"mount": digest})
    assert mounted.status_code == 201
    assert client.get(f"/v2/{user}/second/blobs/{digest}").content == b"in my namespace"
    other, other_token = registry.user()
    elsewhere = http(registry.url, other_token).post(f"/v2/{other}/copy/blobs/uploads/", params={"mount": digest})
    assert elsewhere.status_code == 202  # another namespace's blob is never found by digest alone
