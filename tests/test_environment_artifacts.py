"""Environment artifacts (what a cluster's build Job stores, ``registry/environments.py``) as an attacker
meets them: the Job's push token, which the requirements' own build code can read, stores that one
artifact and nothing else; and no author can store one, so none can plant an environment that another
repository's versions with the same requirements would run."""

from __future__ import annotations

import io
import json
import tarfile
import uuid
from pathlib import Path

import httpx
import pytest

from conftest import RegistryServer
from modelhall.bundle import UnsafeArchiveError
from modelhall.bundle import mediatypes as mt
from modelhall.registry.auth.tokens import issue_environment_push_token, issue_version_pull_token
from modelhall.registry.db.session import make_session_factory
from modelhall.registry.environments import StoredEnvironments
from modelhall.showcase.bootstrap import fetch_environment
from modelhall.adapters.storage.filesystem import FileBlobStore
from oci_helpers import error_code, http, sha256
from test_runtime import push, quick_hello

KEY = "0123456789abcdef"


def environment_artifact(key: str = KEY) -> tuple[bytes, bytes, bytes]:
    """A config, a layer and the manifest naming them, as ``showcase/build_environment.py`` makes them."""
    config, layer = json.dumps({"key": key}).encode(), b"pretend tar+gzip of site-packages"
    manifest = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "artifactType": mt.ENVIRONMENT_ARTIFACT_TYPE,
                "config": {"mediaType": mt.ENVIRONMENT_CONFIG_TYPE, "digest": sha256(config), "size": len(config)},
                "layers": [{"mediaType": mt.ENVIRONMENT_LAYER_TYPE, "digest": sha256(layer), "size": len(layer)}],
                "annotations": {mt.ANNOTATION_ENVIRONMENT_KEY: key}}
    return config, layer, json.dumps(manifest).encode()


def bearer(registry: RegistryServer, token: str) -> httpx.Client:
    return httpx.Client(base_url=registry.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def store(client: httpx.Client, repository: str, config: bytes, layer: bytes, manifest: bytes,
          reference: str | None = None) -> httpx.Response:
    for blob in (config, layer):
        uploaded = client.post(f"/v2/{repository}/blobs/uploads/", params={"digest": sha256(blob)}, content=blob)
        if uploaded.status_code != 201:
            return uploaded
    return client.put(f"/v2/{repository}/manifests/{reference or sha256(manifest)}", content=manifest,
                      headers={"Content-Type": mt.OCI_MANIFEST})


@pytest.fixture
def built(registry: RegistryServer, tmp_path: Path) -> tuple[str, str, httpx.Client]:
    """A repository with a version, and a build Job's token for it."""
    user, token, _ = push(registry, quick_hello(tmp_path), "needs-more", public=False)
    job_token = issue_environment_push_token(registry.signing_key, f"{user}/needs-more", KEY, 600)
    return f"{user}/needs-more", token, bearer(registry, job_token)


def test_the_job_token_stores_its_environment_by_digest(built: tuple[str, str, httpx.Client]) -> None:
    repository, _, job = built
    stored = store(job, repository, *environment_artifact())
    assert stored.status_code == 201, stored.text


def test_the_job_token_moves_no_tag(built: tuple[str, str, httpx.Client]) -> None:
    repository, _, job = built
    refused = store(job, repository, *environment_artifact(), reference="latest")
    assert (refused.status_code, error_code(refused)) == (403, "DENIED")
    assert "by digest only" in refused.json()["errors"][0]["detail"]


def test_the_job_token_stores_no_other_manifest_and_no_other_environment(built: tuple[str, str, httpx.Client]) -> None:
    repository, _, job = built
    config, layer, manifest = environment_artifact()
    plain = json.loads(manifest)
    del plain["artifactType"]
    refused = store(job, repository, config, layer, json.dumps(plain).encode())
    assert (refused.status_code, error_code(refused)) == (403, "DENIED")
    other = store(job, repository, *environment_artifact("fedcba9876543210"))
    assert (other.status_code, error_code(other)) == (403, "DENIED")
    assert "not the environment this build was asked for" in other.json()["errors"][0]["detail"]


def test_the_job_token_reads_nothing_and_reaches_no_other_repository(registry: RegistryServer,
                                                                    built: tuple[str, str, httpx.Client]) -> None:
    repository, token, job = built
    owner_view = http(registry.url, token).get(f"/v2/{repository}/manifests/latest",
                                               headers={"Accept": mt.OCI_MANIFEST})
    assert owner_view.status_code == 200
    assert job.get(f"/v2/{repository}/manifests/latest", headers={"Accept": mt.OCI_MANIFEST}).status_code in (401, 404)
    layer = json.loads(owner_view.content)["layers"][0]["digest"]
    assert job.get(f"/v2/{repository}/blobs/{layer}").status_code in (401, 404)  # the model's code stays hidden
    victim, _ = registry.user()
    elsewhere = store(job, f"{victim}/anything", *environment_artifact())
    assert elsewhere.status_code in (401, 403, 404)


def test_no_author_can_store_an_environment_that_others_would_run(registry: RegistryServer,
                                                                  built: tuple[str, str, httpx.Client]) -> None:
    repository, token, _ = built
    refused = store(http(registry.url, token), repository, *environment_artifact())
    assert (refused.status_code, error_code(refused)) == (403, "DENIED")
    assert "environment builds only" in refused.json()["errors"][0]["detail"]


def test_an_environment_built_for_one_repository_is_recorded_in_another_with_the_same_key(
        registry: RegistryServer, built: tuple[str, str, httpx.Client], tmp_path: Path) -> None:
    repository, _, job = built
    config, layer, manifest = environment_artifact()
    assert store(job, repository, config, layer, manifest).status_code == 201
    user, token, _ = push(registry, quick_hello(tmp_path / "other"), "same-needs", public=False)
    engine = registry.engine()
    try:
        environments = StoredEnvironments(make_session_factory(engine), FileBlobStore(registry.data_dir / "storage"))
        assert environments.find("ffffffffffffffff", f"{user}/same-needs") is None
        assert environments.find(KEY, f"{user}/same-needs") == sha256(manifest)
    finally:
        engine.dispose()
    pulled = http(registry.url, token).get(f"/v2/{user}/same-needs/blobs/{sha256(layer)}", follow_redirects=True)
    assert pulled.content == layer  # its blobs, linked into the repository that adopted it


def test_an_environment_type_in_the_config_is_refused_too_and_never_found(registry: RegistryServer,
                                                                          tmp_path: Path) -> None:
    """Found by a red-team pass: an author put the environment type in ``config.mediaType`` (which the
    registry records as the artifact's type) instead of ``artifactType``, and a victim adopted it."""
    attacker, token = registry.user()
    victims_key = uuid.uuid4().hex  # no honest build has stored it
    config, layer, manifest = environment_artifact(victims_key)
    planted = json.loads(manifest)
    del planted["artifactType"]
    planted["config"]["mediaType"] = mt.ENVIRONMENT_ARTIFACT_TYPE
    refused = store(http(registry.url, token), f"{attacker}/innocent", config, layer, json.dumps(planted).encode())
    assert (refused.status_code, error_code(refused)) == (403, "DENIED")
    victim, _, _ = push(registry, quick_hello(tmp_path), "victim-model", public=False)
    engine = registry.engine()
    try:
        environments = StoredEnvironments(make_session_factory(engine), FileBlobStore(registry.data_dir / "storage"))
        assert environments.find(victims_key, f"{victim}/victim-model") is None
    finally:
        engine.dispose()


def test_the_job_token_stores_no_bundle_no_subject_and_no_extra_annotations(
        built: tuple[str, str, httpx.Client]) -> None:
    repository, _, job = built
    config, layer, manifest = environment_artifact()
    for change in ({"config": {"mediaType": mt.SPEC_MEDIA_TYPE, "digest": sha256(config), "size": len(config)}},
                   {"subject": {"mediaType": mt.OCI_MANIFEST, "digest": sha256(b"x"), "size": 1}},
                   {"annotations": {mt.ANNOTATION_ENVIRONMENT_KEY: KEY, mt.ANNOTATION_DESCRIPTION: "mine"}},
                   {"layers": []}):
        refused = store(job, repository, config, layer, json.dumps({**json.loads(manifest), **change}).encode())
        assert (refused.status_code, error_code(refused)) == (403, "DENIED"), change


def test_the_job_token_opens_no_rest_api(registry: RegistryServer, built: tuple[str, str, httpx.Client]) -> None:
    """Found by a red-team pass: the push right let a build read the repository's worker logs."""
    repository, token, job = built
    assert http(registry.url, token).get(f"/api/v1/repos/{repository}").status_code == 200
    for path in (f"/api/v1/repos/{repository}/deployment/logs", f"/api/v1/repos/{repository}", "/api/v1/whoami"):
        refused = job.get(path)
        assert refused.status_code == 401, path
        assert "OCI API only" in refused.text


def hostile_layer() -> bytes:
    """A tar+gzip whose members climb out of the folder it is unpacked into."""
    packed = io.BytesIO()
    with tarfile.open(fileobj=packed, mode="w:gz") as tar:
        for name, data in (("alpha/__init__.py", b"VERSION = '1.0'\n"), ("../../escaped.py", b"import os\n")):
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    return packed.getvalue()


def test_a_pod_refuses_an_environment_layer_that_climbs_out_of_its_folder(
        registry: RegistryServer, built: tuple[str, str, httpx.Client], tmp_path: Path) -> None:
    repository, token, job = built
    config, _, manifest = environment_artifact()
    layer = hostile_layer()  # what a build's own code could pack instead of its packages
    document = json.loads(manifest)
    document["layers"][0] |= {"digest": sha256(layer), "size": len(layer)}
    manifest = json.dumps(document).encode()
    assert store(job, repository, config, layer, manifest).status_code == 201
    bundle = http(registry.url, token).get(f"/v2/{repository}/manifests/latest", headers={"Accept": mt.OCI_MANIFEST})
    pod_token = issue_version_pull_token(registry.signing_key, repository,
                                         [sha256(bundle.content), sha256(manifest)], 600)
    target = tmp_path / "pod" / "tmp" / "environment"
    target.parent.mkdir(parents=True)
    with pytest.raises(UnsafeArchiveError):
        fetch_environment(registry.url, repository, sha256(manifest), pod_token, target)
    assert not (tmp_path / "escaped.py").exists() and not (tmp_path / "pod" / "escaped.py").exists()
