"""The OCI Distribution API, driven as a black box over HTTP."""

from __future__ import annotations

import json
import os

import httpx
import pytest

from conftest import RegistryServer
from modelhall.bundle import mediatypes as mt
from oci_helpers import error_code, http, image_manifest, push_image, sha256, upload


@pytest.fixture
def alice(registry: RegistryServer) -> tuple[httpx.Client, str]:
    name, token = registry.user()
    return http(registry.url, token), name


def blob_files(registry: RegistryServer) -> list[str]:
    root = registry.data_dir / "storage" / "blobs"
    return [p.name for p in root.rglob("*") if p.is_file()]


def test_version_check_asks_anonymous_clients_to_log_in(registry: RegistryServer,
                                                       alice: tuple[httpx.Client, str]) -> None:
    response = httpx.get(f"{registry.url}/v2/")
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith(f'Bearer realm="{registry.url}/token"')
    client, _ = alice
    assert client.get("/v2/").status_code == 200


def test_monolithic_upload_then_get_head_and_range(alice: tuple[httpx.Client, str]) -> None:
    client, user = alice
    repository, data = f"{user}/blobs", os.urandom(5000)
    digest = upload(client, repository, data)
    head = client.head(f"/v2/{repository}/blobs/{digest}")
    assert (head.status_code, head.headers["content-length"], head.headers["docker-content-digest"]) == (
        200, "5000", digest)
    assert client.get(f"/v2/{repository}/blobs/{digest}").content == data
    part = client.get(f"/v2/{repository}/blobs/{digest}", headers={"Range": "bytes=100-199"})
    assert (part.status_code, part.content, part.headers["content-range"]) == (206, data[100:200], "bytes 100-199/5000")
    tail = client.get(f"/v2/{repository}/blobs/{digest}", headers={"Range": "bytes=-10"})
    assert tail.content == data[-10:]
    outside = client.get(f"/v2/{repository}/blobs/{digest}", headers={"Range": "bytes=6000-"})
    assert outside.status_code == 416


def test_post_then_put_upload(alice: tuple[httpx.Client, str]) -> None:
    client, user = alice
    repository, data = f"{user}/two-step", b"two step upload"
    started = client.post(f"/v2/{repository}/blobs/uploads/")
    assert started.status_code == 202
    done = client.put(started.headers["location"], params={"digest": sha256(data)}, content=data)
    assert done.status_code == 201
    assert done.headers["location"] == f"/v2/{repository}/blobs/{sha256(data)}"


def test_chunked_upload_survives_a_registry_restart(fresh_registry: RegistryServer) -> None:
    user, token = fresh_registry.user()
    repository, data = f"{user}/chunks", os.urandom(300_000)
    with http(fresh_registry.url, token) as client:
        location = client.post(f"/v2/{repository}/blobs/uploads/").headers["location"]
        first = client.patch(location, content=data[:100_000], headers={"Content-Range": "0-99999"})
        assert (first.status_code, first.headers["range"]) == (202, "0-99999")
    fresh_registry.restart()
    with http(fresh_registry.url, token) as client:
        status = client.get(location)
        assert (status.status_code, status.headers["range"]) == (204, "0-99999")
        second = client.patch(location, content=data[100_000:250_000], headers={"Content-Range": "100000-249999"})
        assert second.headers["range"] == "0-249999"
        done = client.put(location, params={"digest": sha256(data)}, content=data[250_000:])
        assert done.status_code == 201, done.text
        assert client.get(f"/v2/{repository}/blobs/{sha256(data)}").content == data


def test_out_of_order_chunk_is_refused_with_416(alice: tuple[httpx.Client, str]) -> None:
    client, user = alice
    location = client.post(f"/v2/{user}/order/blobs/uploads/").headers["location"]
    client.patch(location, content=b"12345", headers={"Content-Range": "0-4"})
    skipped = client.patch(location, content=b"abcde", headers={"Content-Range": "10-14"})
    assert skipped.status_code == 416
    assert error_code(skipped) == "BLOB_UPLOAD_INVALID"
    assert skipped.headers["range"] == "0-4"
    assert client.get(location).headers["range"] == "0-4"  # the refused chunk left nothing behind


def test_chunk_shorter_than_its_content_range_is_rolled_back(alice: tuple[httpx.Client, str]) -> None:
    client, user = alice
    location = client.post(f"/v2/{user}/short/blobs/uploads/").headers["location"]
    client.patch(location, content=b"12345", headers={"Content-Range": "0-4"})
    short = client.patch(location, content=b"abc", headers={"Content-Range": "5-9"})
    assert (short.status_code, error_code(short)) == (400, "SIZE_INVALID")
    assert client.get(location).headers["range"] == "0-4"


def test_wrong_digest_is_refused_and_nothing_is_stored(registry: RegistryServer,
                                                        alice: tuple[httpx.Client, str]) -> None:
    client, user = alice
    data, claimed = os.urandom(1000), sha256(b"not this")
    before = blob_files(registry)
    monolithic = client.post(f"/v2/{user}/digest/blobs/uploads/", params={"digest": claimed}, content=data)
    assert (monolithic.status_code, error_code(monolithic)) == (400, "DIGEST_INVALID")
    location = client.post(f"/v2/{user}/digest/blobs/uploads/").headers["location"]
    chunked = client.put(location, params={"digest": claimed}, content=data)
    assert error_code(chunked) == "DIGEST_INVALID"
    assert client.head(f"/v2/{user}/digest/blobs/{claimed}").status_code == 404
    assert client.head(f"/v2/{user}/digest/blobs/{sha256(data)}").status_code == 404
    assert blob_files(registry) == before
    assert client.get(location).status_code == 404  # the failed session is gone


def test_malformed_digest(alice: tuple[httpx.Client, str]) -> None:
    client, user = alice
    response = client.post(f"/v2/{user}/x/blobs/uploads/", params={"digest": "md5:abc"}, content=b"x")
    assert error_code(response) == "DIGEST_INVALID"


def test_manifest_naming_a_missing_blob_is_refused(alice: tuple[httpx.Client, str]) -> None:
    client, user = alice
    repository = f"{user}/missing"
    upload(client, repository, b"{}")
    body = json.dumps(image_manifest(b"{}", [b"never uploaded"])).encode()
    response = client.put(f"/v2/{repository}/manifests/v1", content=body, headers={"Content-Type": mt.OCI_MANIFEST})
    assert (response.status_code, error_code(response)) == (400, "MANIFEST_BLOB_UNKNOWN")
    assert response.json()["errors"][0]["detail"] == sha256(b"never uploaded")
    assert client.get(f"/v2/{repository}/manifests/v1").status_code == 404


def test_manifest_digest_and_json_are_checked(alice: tuple[httpx.Client, str]) -> None:
    client, user = alice
    repository = f"{user}/checked"
    digest, body = push_image(client, repository, "v1")
    wrong = client.put(f"/v2/{repository}/manifests/{sha256(b'other')}", content=body,
                       headers={"Content-Type": mt.OCI_MANIFEST})
    assert error_code(wrong) == "DIGEST_INVALID"
    garbage = client.put(f"/v2/{repository}/manifests/v2", content=b"{not json",
                         headers={"Content-Type": mt.OCI_MANIFEST})
    assert error_code(garbage) == "MANIFEST_INVALID"
    by_digest = client.put(f"/v2/{repository}/manifests/{digest}", content=body,
                           headers={"Content-Type": mt.OCI_MANIFEST})
    assert by_digest.status_code == 201


def test_get_manifest_by_tag_and_digest(alice: tuple[httpx.Client, str]) -> None:
    client, user = alice
    repository = f"{user}/manifests"
    digest, body = push_image(client, repository, "v1")
    for reference in ("v1", digest):
        response = client.get(f"/v2/{repository}/manifests/{reference}")
        assert (response.content, response.headers["content-type"], response.headers["docker-content-digest"]) == (
            body, mt.OCI_MANIFEST, digest)
    assert client.head(f"/v2/{repository}/manifests/v1").headers["content-length"] == str(len(body))
    assert error_code(client.get(f"/v2/{repository}/manifests/nope")) == "MANIFEST_UNKNOWN"


def test_tag_listing_paginates(alice: tuple[httpx.Client, str]) -> None:
    client, user = alice
    repository = f"{user}/paged"
    digest, body = push_image(client, repository, "t0")
    for tag in ("t1", "t2", "t3", "t4"):
        client.put(f"/v2/{repository}/manifests/{tag}", content=body, headers={"Content-Type": mt.OCI_MANIFEST})
    everything = client.get(f"/v2/{repository}/tags/list").json()
    assert everything == {"name": repository, "tags": ["t0", "t1", "t2", "t3", "t4"]}
    first = client.get(f"/v2/{repository}/tags/list", params={"n": 2})
    assert first.json()["tags"] == ["t0", "t1"]
    assert first.headers["link"] == f'</v2/{repository}/tags/list?n=2&last=t1>; rel="next"'
    second = client.get(f"/v2/{repository}/tags/list", params={"n": 2, "last": "t1"})
    assert second.json()["tags"] == ["t2", "t3"]
    last = client.get(f"/v2/{repository}/tags/list", params={"n": 2, "last": "t3"})
    assert last.json()["tags"] == ["t4"] and "link" not in last.headers
    assert client.get(f"/v2/{repository}/tags/list", params={"n": 0}).json()["tags"] == []


def test_referrers_with_and_without_filter(alice: tuple[httpx.Client, str]) -> None:
    client, user = alice
    repository = f"{user}/referred"
    subject_digest, subject_body = push_image(client, repository, "v1")
    subject = {"mediaType": mt.OCI_MANIFEST, "digest": subject_digest, "size": len(subject_body)}
    signature = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "artifactType": "application/vnd.test.signature",
                 "config": {"mediaType": mt.OCI_EMPTY_JSON, "digest": sha256(b"{}"), "size": 2},
                 "layers": [], "subject": subject, "annotations": {"who": "ci"}}
    body = json.dumps(signature).encode()
    pushed = client.put(f"/v2/{repository}/manifests/{sha256(body)}", content=body,
                        headers={"Content-Type": mt.OCI_MANIFEST})
    assert pushed.headers["oci-subject"] == subject_digest
    push_image(client, repository, "sbom", config=b'{"sbom": 1}', layers=(b"sbom",),
               subject=subject)
    listed = client.get(f"/v2/{repository}/referrers/{subject_digest}")
    assert listed.headers["content-type"] == mt.OCI_INDEX
    types = sorted(m["artifactType"] for m in listed.json()["manifests"])
    assert types == ["application/vnd.test.config+json", "application/vnd.test.signature"]
    filtered = client.get(f"/v2/{repository}/referrers/{subject_digest}",
                          params={"artifactType": "application/vnd.test.signature"})
    assert filtered.headers["oci-filters-applied"] == "artifactType"
    [only] = filtered.json()["manifests"]
    assert (only["digest"], only["annotations"]) == (sha256(body), {"who": "ci"})
    nothing = client.get(f"/v2/{repository}/referrers/{sha256(b'no subject')}")
    assert (nothing.status_code, nothing.json()["manifests"]) == (200, [])


def test_delete_tag_manifest_and_blob(alice: tuple[httpx.Client, str]) -> None:
    client, user = alice
    repository = f"{user}/deleted"
    digest, body = push_image(client, repository, "v1", layers=(b"to delete",))
    client.put(f"/v2/{repository}/manifests/v2", content=body, headers={"Content-Type": mt.OCI_MANIFEST})
    assert client.delete(f"/v2/{repository}/manifests/v2").status_code == 202
    assert client.get(f"/v2/{repository}/tags/list").json()["tags"] == ["v1"]
    assert client.delete(f"/v2/{repository}/manifests/{digest}").status_code == 202
    assert client.get(f"/v2/{repository}/manifests/v1").status_code == 404
    assert client.get(f"/v2/{repository}/manifests/{digest}").status_code == 404
    layer = sha256(b"to delete")
    assert client.delete(f"/v2/{repository}/blobs/{layer}").status_code == 202
    assert error_code(client.get(f"/v2/{repository}/blobs/{layer}")) == "BLOB_UNKNOWN"


def test_cross_repository_mount(alice: tuple[httpx.Client, str]) -> None:
    client, user = alice
    digest = upload(client, f"{user}/source", b"shared weights")
    mounted = client.post(f"/v2/{user}/target/blobs/uploads/", params={"mount": digest, "from": f"{user}/source"})
    assert (mounted.status_code, mounted.headers["location"]) == (201, f"/v2/{user}/target/blobs/{digest}")
    assert client.get(f"/v2/{user}/target/blobs/{digest}").content == b"shared weights"
    fallback = client.post(f"/v2/{user}/target/blobs/uploads/", params={"mount": digest, "from": "nobody/nothing"})
    assert fallback.status_code == 202  # not mountable: a normal upload session instead


def test_blob_of_another_repository_is_not_reachable(alice: tuple[httpx.Client, str]) -> None:
    client, user = alice
    digest = upload(client, f"{user}/one", b"only in one")
    push_image(client, f"{user}/two", "v1")
    assert error_code(client.get(f"/v2/{user}/two/blobs/{digest}")) == "BLOB_UNKNOWN"


def test_cancelled_upload(alice: tuple[httpx.Client, str]) -> None:
    client, user = alice
    location = client.post(f"/v2/{user}/cancel/blobs/uploads/").headers["location"]
    assert client.delete(location).status_code == 204
    assert error_code(client.get(location)) == "BLOB_UPLOAD_UNKNOWN"
    assert error_code(client.patch(location, content=b"late")) == "BLOB_UPLOAD_UNKNOWN"


@pytest.mark.parametrize("name", ["UPPER/case", "single", "a//b", "a/-b", "a/b_"])
def test_invalid_repository_names(alice: tuple[httpx.Client, str], name: str) -> None:
    client, _ = alice
    response = client.post(f"/v2/{name}/blobs/uploads/")
    assert error_code(response) == "NAME_INVALID"


def test_catalog_lists_only_what_the_caller_may_pull(registry: RegistryServer,
                                                    alice: tuple[httpx.Client, str]) -> None:
    client, user = alice
    push_image(client, f"{user}/catalogued", "v1")
    assert f"{user}/catalogued" in client.get("/v2/_catalog").json()["repositories"]
    assert f"{user}/catalogued" not in httpx.get(f"{registry.url}/v2/_catalog").json()["repositories"]
