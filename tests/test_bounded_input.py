"""Input past what the platform takes: each test is an attack (a spec of aliases, a huge or deeply
nested body, a flood of log output) that must be refused with a precise answer, or bounded, and
leave what is stored readable."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from conftest import RegistryServer, serve_registry, unique
from modelhall.bundle import mediatypes as mt
from modelhall.bundle import pack_bundle
from modelhall.registry.db.models import Run
from modelhall.registry.db.session import make_session_factory
from modelhall.spec import SpecError, load_spec_file, parse_spec_json, parse_spec_yaml
from modelhall.templates import template_path
from oci_helpers import error_code, http, image_manifest, push_packed, upload
from test_cli import cli
from test_runtime import wait_for

PLATFORM_MAX = 1024**2
MAX_LOG_BYTES = 16 * 1024
# 5 levels of 9 aliases each: 345 bytes that stand for 59 049 values (each level more multiplies it by 9).
ALIAS_BOMB = "name: bomb\nversion: '1'\ntags: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{level}: &{level} [{', '.join([f'*{previous}'] * 9)}]\n" for previous, level in zip("abcd", "bcde"))
# A model that floods its output with one line of 2 MiB per prediction and answers how long its input was.
LOUD = '''
import sys


def predict(name, style="plain"):
    sys.stdout.write("x" * (2 * 1024 * 1024) + "\\n")
    sys.stdout.flush()
    return str(len(name))
'''


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.fixture(scope="module")
def bounded_registry(database_kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    yield from serve_registry(database_kind, tmp_path_factory.mktemp("bounded") / "registry",
                              {"MODELHALL_REAPER_INTERVAL": "1", "MODELHALL_MAX_REQUEST_BYTES": str(PLATFORM_MAX)})


def hello_bundle(tmp_path: Path, model: str | None = None, unbounded_text: bool = False) -> Path:
    bundle = tmp_path / unique("bundle")
    shutil.copytree(template_path("hello"), bundle)
    if model is not None:
        (bundle / "predict.py").write_text(model)
    if unbounded_text:  # no max_length: only the platform's maximum bounds a request
        spec = (bundle / "modelhall.yaml").read_text()
        (bundle / "modelhall.yaml").write_text(spec.replace(", max_length: 100}", "}"))
    return bundle


def pushed(registry: RegistryServer, bundle: Path) -> tuple[str, httpx.Client]:
    user, token = registry.user()
    owner = http(registry.url, token)
    owner.timeout = httpx.Timeout(180)
    with pack_bundle(bundle) as packed:
        push_packed(owner, f"{user}/model", "latest", packed)
    return f"{user}/model", owner


def test_a_spec_past_one_mib_is_refused_by_its_size_not_read(tmp_path: Path) -> None:
    bundle = hello_bundle(tmp_path)
    spec = bundle / "modelhall.yaml"
    spec.write_text(spec.read_text() + "# " + "secret-looking padding " * 50_000 + "\n")
    with pytest.raises(SpecError, match="modelhall.yaml is larger than 1024 KiB") as refused:
        load_spec_file(bundle)
    assert "padding" not in str(refused.value)  # the file's contents are never quoted
    with pytest.raises(SpecError, match="larger than 1024 KiB"):
        parse_spec_yaml(spec.read_text())


def test_a_spec_of_aliases_is_refused_before_it_expands(bounded_registry: RegistryServer, tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="its aliases expand it past 20000 values"):
        parse_spec_yaml(ALIAS_BOMB)
    with pytest.raises(SpecError, match="nested deeper than 64 levels"):
        parse_spec_yaml("name: deep\ntags: " + nested(80))
    with pytest.raises(SpecError, match="nested deeper than 64 levels"):
        parse_spec_json('{"name": "deep", "tags": ' + nested(5000) + "}")

    bundle = hello_bundle(tmp_path)
    (bundle / "modelhall.yaml").write_text(ALIAS_BOMB)
    user, token = bounded_registry.user()
    for command in (["validate", str(bundle)], ["push", str(bundle), f"{user}/bomb:v1"]):
        refused = cli(bounded_registry, *command, token=token, check=False)
        assert refused.returncode == 1 and "its aliases expand it past 20000 values" in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr

    owner = http(bounded_registry.url, token)  # as plain `oras push modelhall.yaml` would send it
    config, spec = b"{}", ALIAS_BOMB.encode()
    upload(owner, f"{user}/bomb", config)
    upload(owner, f"{user}/bomb", spec)
    manifest = image_manifest(config, [spec])
    manifest["layers"][0]["annotations"] = {mt.ANNOTATION_TITLE: "modelhall.yaml"}
    answer = owner.put(f"/v2/{user}/bomb/manifests/v1", content=json.dumps(manifest),
                       headers={"Content-Type": mt.OCI_MANIFEST})
    assert (answer.status_code, error_code(answer)) == (400, "MANIFEST_INVALID")
    assert "its aliases expand it past 20000 values" in answer.text
    assert owner.get(f"/api/v1/repos/{user}/bomb/versions").json() == []


def test_request_bodies_past_the_models_limit_get_413(bounded_registry: RegistryServer, tmp_path: Path) -> None:
    repository, owner = pushed(bounded_registry, hello_bundle(tmp_path))
    big = json.dumps({"inputs": {"name": "x" * 200_000}}).encode()
    whole = owner.post(f"/api/v1/repos/{repository}/predict", content=big,
                       headers={"Content-Type": "application/json"})
    streamed = owner.post(f"/api/v1/repos/{repository}/predict", headers={"Content-Type": "application/json"},
                          content=(big[i:i + 8192] for i in range(0, len(big), 8192)))  # chunked: no length
    queued = owner.post(f"/api/v1/repos/{repository}/runs", content=big, headers={"Content-Type": "application/json"})
    for answer in (whole, streamed, queued):
        assert answer.status_code == 413, answer.text
        limit = answer.json()["limit"]
        assert limit < len(big) and f"larger than the {limit} bytes this model takes" in answer.json()["detail"]
    assert owner.get(f"/api/v1/repos/{repository}/deployment").json()["workers"] == []  # nothing woke for them
    assert owner.get(f"/api/v1/repos/{repository}/runs").json() == []


def test_deeply_nested_json_is_refused_with_400(bounded_registry: RegistryServer, tmp_path: Path) -> None:
    repository, owner = pushed(bounded_registry, hello_bundle(tmp_path))
    deep_inputs = '{"inputs": {"name": ' + nested(5000) + "}}"
    for path in ("predict", "runs"):
        answer = owner.post(f"/api/v1/repos/{repository}/{path}", content=deep_inputs,
                            headers={"Content-Type": "application/json"})
        assert answer.status_code == 400 and "nested deeper than 64 levels" in answer.text, (path, answer.text)

    config = b"{}"
    upload(owner, repository, config)
    upload(owner, repository, b"layer")
    for depth in (100, 5000):
        body = json.dumps(image_manifest(config, [b"layer"]))[:-1] + ', "annotations": {"x": ' + nested(depth) + "}}"
        answer = owner.put(f"/v2/{repository}/manifests/deep{depth}", content=body,
                           headers={"Content-Type": mt.OCI_MANIFEST})
        assert (answer.status_code, error_code(answer)) == (400, "MANIFEST_INVALID"), answer.text
    annotations = {"org.example.nested": json.loads(nested(40))}
    accepted = owner.put(f"/v2/{repository}/manifests/nested", content=json.dumps(
        image_manifest(config, [b"layer"], annotations=annotations)), headers={"Content-Type": mt.OCI_MANIFEST})
    assert accepted.status_code == 201, accepted.text
    read_back = owner.get(f"/api/v1/repos/{repository}/versions/nested")
    assert read_back.status_code == 200 and read_back.json()["annotations"] == annotations
    assert owner.get(f"/v2/{repository}/manifests/nested", headers={"Accept": mt.OCI_MANIFEST}).status_code == 200


def test_large_inputs_logs_and_uploads_stay_out_of_the_database(bounded_registry: RegistryServer,
                                                                tmp_path: Path) -> None:
    repository, owner = pushed(bounded_registry, hello_bundle(tmp_path, model=LOUD, unbounded_text=True))
    name = "n" * 300_000  # under the platform's 1 MiB, far over what a database row should hold
    queued = owner.post(f"/api/v1/repos/{repository}/runs", json={"inputs": {"name": name}})
    assert queued.status_code == 202, queued.text
    run_url = queued.json()["url"]
    wait_for(lambda: owner.get(run_url).json()["status"] in ("succeeded", "failed"), "the async run", 180)
    run = owner.get(run_url).json()
    assert (run["status"], run["outputs"]) == ("succeeded", {"greeting": str(len(name))})  # the model got it all
    stored = run["inputs"]["name"]
    assert stored["size"] > len(name) and owner.get(f"{run_url}/files/{stored['digest']}").json() == name
    engine = bounded_registry.engine()
    try:
        with make_session_factory(engine)() as db:
            row = db.scalar(select(Run).where(Run.id == run["id"]))
            assert row is not None and len(json.dumps(row.inputs)) < 1024
    finally:
        engine.dispose()

    assert owner.post(f"/api/v1/repos/{repository}/predict", json={"inputs": {"name": "Ada"}}).status_code == 200
    wait_for(lambda: len(owner.get(f"/api/v1/repos/{repository}/runs").json()) == 2, "the run in the history")
    [predicted] = owner.get(f"/api/v1/repos/{repository}/runs", params={"source": "api"}).json()
    assert predicted["logs"].endswith("x" * 1000) and len(predicted["logs"].encode()) <= MAX_LOG_BYTES

    demo = httpx.Client(base_url=bounded_registry.demo_url, auth=owner.auth, timeout=180)
    upload_path = f"/demo/{repository}/gradio_api/upload"
    too_big = (b'--cut\r\nContent-Disposition: form-data; name="files"; filename="big.bin"\r\n'
               b"Content-Type: application/octet-stream\r\n\r\n" + b"u" * PLATFORM_MAX + b"\r\n--cut--\r\n")
    for content in (too_big, (too_big[i:i + 65536] for i in range(0, len(too_big), 65536))):
        answer = demo.post(upload_path, content=content, headers={"Content-Type": "multipart/form-data; boundary=cut"})
        assert answer.status_code == 413 and answer.json()["limit"] == PLATFORM_MAX, answer.text
