"""The local runtime behind the gateway: wake on request, sleep when idle, recover after a crash."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from gradio_client import Client
from sqlalchemy import text

from conftest import RegistryServer, serve_registry
from modelhall.bundle import pack_bundle
from modelhall.templates import template_path
from oci_helpers import http, push_packed

IDLE_TIMEOUT = 2
SETTLE_SECONDS = 45  # upper bound for a worker to start or stop; the loops below end as soon as it has


@pytest.fixture
def runtime_registry(database_kind: str, tmp_path: Path) -> Iterator[RegistryServer]:
    yield from serve_registry(database_kind, tmp_path / "registry", {"MODELHALL_REAPER_INTERVAL": "0.5"})


MODEL_SERVER_IMAGE = "registry.example/modelhall/model-server@sha256:" + "1" * 64


@pytest.fixture(params=["local", "kubernetes", "openfaas"])
def any_runtime_registry(request: pytest.FixtureRequest, database_kind: str,
                         tmp_path: Path) -> Iterator[RegistryServer]:
    """The runtime protocol's shared suite: a registry on the local runtime, one on the Kubernetes runtime
    against the Kubernetes API test double, and one on OpenFaaS against the gateway test double (on
    faas-netes on the Kubernetes double); the cluster runtimes with SQLite only: the database is not
    what differs."""
    if request.param == "local":
        yield from serve_registry(database_kind, tmp_path / "registry", {"MODELHALL_REAPER_INTERVAL": "0.5"})
        return
    if database_kind != "sqlite":
        pytest.skip("the cluster runtimes' shared suite runs on SQLite")
    from kubernetes_double import KubernetesDouble
    from openfaas_double import MODEL_SERVER_COMMAND, OpenFaaSGatewayDouble

    (tmp_path / "double").mkdir()
    common = {"MODELHALL_REAPER_INTERVAL": "0.5", "MODELHALL_K8S_IMAGE": MODEL_SERVER_IMAGE}
    if request.param == "kubernetes":
        with KubernetesDouble(tmp_path / "double") as double:
            yield from serve_registry("sqlite", tmp_path / "registry", {
                **common, "MODELHALL_RUNTIME": "kubernetes", "MODELHALL_K8S_KUBECONFIG": str(double.kubeconfig),
                "MODELHALL_K8S_NAMESPACE": double.namespace})
        return
    with KubernetesDouble(tmp_path / "double", namespace="openfaas-fn", pod_security=None) as cluster:
        gateway = OpenFaaSGatewayDouble({MODEL_SERVER_IMAGE: MODEL_SERVER_COMMAND}, kubernetes=cluster).start()
        try:
            yield from serve_registry("sqlite", tmp_path / "registry", {
                **common, "MODELHALL_RUNTIME": "openfaas", "MODELHALL_OPENFAAS_GATEWAY": gateway.url,
                "MODELHALL_OPENFAAS_PASSWORD": "secret", "MODELHALL_K8S_KUBECONFIG": str(cluster.kubeconfig)})
        finally:
            gateway.stop()


def quick_hello(tmp_path: Path, idle_timeout: int = IDLE_TIMEOUT, model: str | None = None,
                scaling: str = "") -> Path:
    """The hello template with a short idle timeout; ``model`` replaces its predict.py, and
    ``scaling`` is added to its scaling section (``", queue: 1"``)."""
    bundle = tmp_path / "hello"
    shutil.copytree(template_path("hello"), bundle)
    if model is not None:
        (bundle / "predict.py").write_text(model)
    spec = (bundle / "modelhall.yaml").read_text()
    (bundle / "modelhall.yaml").write_text(spec.replace("idle_timeout: 300}", f"idle_timeout: {idle_timeout}{scaling}}}"))
    return bundle


def push(registry: RegistryServer, bundle: Path, name: str, public: bool = True) -> tuple[str, str, str]:
    user, token = registry.user()
    client = http(registry.url, token)
    with pack_bundle(bundle) as packed:
        digest = push_packed(client, f"{user}/{name}", "latest", packed)
    if public:
        client.patch(f"/api/v1/repos/{user}/{name}", json={"visibility": "public"}).raise_for_status()
    return user, token, digest


def status(registry: RegistryServer, repository: str, token: str | None = None) -> dict:
    return http(registry.url, token).get(f"/api/v1/repos/{repository}/deployment").json()


def wait_for(condition, what: str, seconds: float = SETTLE_SECONDS) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} did not happen within {seconds} s")


def pid_of(worker: dict) -> int:
    """The process of a local worker: its runtime id is "<name>:<pid>" (opaque to the registry, not to this test)."""
    return int(worker["id"].rpartition(":")[2])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def predict(registry: RegistryServer, repository: str, name: str, token: str | None = None) -> httpx.Response:
    return http(registry.url, token).post(f"/api/v1/repos/{repository}/predict", json={"inputs": {"name": name}},
                                          timeout=120)


def test_first_request_wakes_the_model_and_idle_puts_it_to_sleep(runtime_registry: RegistryServer,
                                                                  tmp_path: Path) -> None:
    user, _, digest = push(runtime_registry, quick_hello(tmp_path), "sleepy")
    repository = f"{user}/sleepy"
    assert status(runtime_registry, repository)["state"] == "sleeping"
    answer = predict(runtime_registry, repository, "Ada")
    assert answer.status_code == 200, answer.text
    assert answer.json() | {"duration_ms": 0} == {"outputs": {"greeting": "Hello, Ada."}, "digest": digest,
                                                  "duration_ms": 0}
    running = status(runtime_registry, repository)
    assert (running["state"], running["build_status"]) == ("running", "ready")
    [worker] = running["workers"]
    assert pid_alive(pid_of(worker))
    wait_for(lambda: status(runtime_registry, repository)["state"] == "sleeping", "scaling to zero")
    wait_for(lambda: not pid_alive(pid_of(worker)), "the worker process ending")
    again = predict(runtime_registry, repository, "Bo")
    assert again.json()["outputs"] == {"greeting": "Hello, Bo."}
    workers = status(runtime_registry, repository)["workers"]
    assert [w["state"] for w in workers] == ["stopped", "ready"] and workers[1]["id"] != worker["id"]


def test_a_deleted_version_stops_its_workers_and_is_forgotten(runtime_registry: RegistryServer, tmp_path: Path) -> None:
    user, token, digest = push(runtime_registry, quick_hello(tmp_path, idle_timeout=300), "deleted")
    repository = f"{user}/deleted"
    assert predict(runtime_registry, repository, "Ada").status_code == 200
    [worker] = status(runtime_registry, repository)["workers"]
    assert http(runtime_registry.url, token).delete(f"/v2/{repository}/manifests/{digest}").status_code == 202
    engine = runtime_registry.engine()

    def deployments() -> int:
        with engine.connect() as db:
            return db.execute(text("SELECT count(*) FROM deployments WHERE digest = :d"), {"d": digest}).scalar_one()
    try:
        wait_for(lambda: deployments() == 0, "the deleted version's deployment being retired")
    finally:
        engine.dispose()
    assert not pid_alive(pid_of(worker))
    assert predict(runtime_registry, repository, "Bo").status_code == 404


def test_steady_requests_keep_the_model_awake_and_its_status_shows_the_last(runtime_registry: RegistryServer,
                                                                          tmp_path: Path) -> None:
    user, _, _ = push(runtime_registry, quick_hello(tmp_path), "steady")
    repository = f"{user}/steady"
    assert predict(runtime_registry, repository, "first").status_code == 200
    [worker] = status(runtime_registry, repository)["workers"]
    until = time.monotonic() + 3 * IDLE_TIMEOUT
    while time.monotonic() < until:  # for three idle timeouts, a request every quarter of one
        asked = datetime.now(UTC)
        assert predict(runtime_registry, repository, "again").status_code == 200
        time.sleep(IDLE_TIMEOUT / 4)
    awake = status(runtime_registry, repository)
    assert awake["state"] == "running" and [w["id"] for w in awake["workers"]] == [worker["id"]]
    assert datetime.fromisoformat(awake["last_request_at"]) >= asked
    wait_for(lambda: status(runtime_registry, repository)["state"] == "sleeping", "scaling to zero once they stop")


def test_callers_waiting_for_a_model_to_wake_hold_no_database_connection(runtime_registry: RegistryServer,
                                                                         tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    bundle = quick_hello(tmp_path, idle_timeout=300, scaling=", queue: 64",
                         model="import time\n\ntime.sleep(10)  # a model slow to load\n\n"
                               "def predict(name, style='plain'):\n    return name\n")
    user, token, _ = push(runtime_registry, bundle, "slow-loader")
    repository = f"{user}/slow-loader"
    callers = 40  # more than the connection pool holds: 15 on SQLite, 30 on PostgreSQL
    with ThreadPoolExecutor(max_workers=callers) as pool:
        answers = [pool.submit(predict, runtime_registry, repository, f"n{i}") for i in range(callers)]
        wait_for(lambda: status(runtime_registry, repository)["state"] == "starting", "the model starting")
        who = http(runtime_registry.url, token).get("/api/v1/whoami", timeout=5)
        assert (who.status_code, who.json()["name"]) == (200, user)
        assert status(runtime_registry, repository)["state"] == "starting"  # answered while the model loads
        assert [answer.result().status_code for answer in answers] == [200] * callers


def test_the_demo_through_the_gateway_with_gradio_client(any_runtime_registry: RegistryServer, tmp_path: Path) -> None:
    user, _, digest = push(any_runtime_registry, quick_hello(tmp_path, idle_timeout=300), "via-gateway")
    # the gateway holds the first call while the model wakes: allow for it
    client = Client(f"{any_runtime_registry.demo_url}/demo/{user}/via-gateway/", verbose=False,
                    download_files=str(tmp_path / "downloads"), httpx_kwargs={"timeout": 120})
    assert client.predict("Cy", "excited", api_name="/predict") == "Hello, Cy!!"
    config = httpx.get(f"{any_runtime_registry.demo_url}/demo/{user}/via-gateway/config").json()
    assert re.fullmatch(rf"{any_runtime_registry.demo_url}/live/\d+@{digest}", config["root"])  # one prefix per version


def test_a_version_by_tag_or_digest(any_runtime_registry: RegistryServer, tmp_path: Path) -> None:
    user, _, digest = push(any_runtime_registry, quick_hello(tmp_path, idle_timeout=300), "pinned")
    by_digest = http(any_runtime_registry.url).post(f"/api/v1/repos/{user}/pinned@{digest}/predict",
                                                json={"inputs": {"name": "D"}}, timeout=120)
    assert by_digest.json()["digest"] == digest
    missing = http(any_runtime_registry.url).post(f"/api/v1/repos/{user}/pinned@v9/predict", json={"inputs": {}})
    assert (missing.status_code, missing.json()["detail"]) == (404, f"{user}/pinned has no version v9")


def test_private_models_are_invisible_through_the_gateway(any_runtime_registry: RegistryServer, tmp_path: Path) -> None:
    user, token, _ = push(any_runtime_registry, quick_hello(tmp_path, idle_timeout=300), "secret", public=False)
    assert predict(any_runtime_registry, f"{user}/secret", "x").status_code == 404
    assert httpx.get(f"{any_runtime_registry.url}/demo/{user}/secret/").status_code == 404
    assert httpx.get(f"{any_runtime_registry.demo_url}/demo/{user}/secret/").status_code == 404
    _, stranger = any_runtime_registry.user()
    assert predict(any_runtime_registry, f"{user}/secret", "x", stranger).status_code == 404
    assert predict(any_runtime_registry, f"{user}/secret", "Owner", token).json()["outputs"] == {
        "greeting": "Hello, Owner."}


def test_a_browser_waits_on_a_starting_page_then_gets_the_demo(runtime_registry: RegistryServer,
                                                               tmp_path: Path) -> None:
    user, _, _ = push(runtime_registry, quick_hello(tmp_path, idle_timeout=300), "paged")
    demo = f"{runtime_registry.demo_url}/demo/{user}/paged/"
    first = httpx.get(demo, headers={"Accept": "text/html"})
    assert first.status_code == 503 and "Starting" in first.text and first.headers["retry-after"] == "2"
    wait_for(lambda: httpx.get(demo, headers={"Accept": "text/html"}, timeout=30).status_code == 200,
             "the demo page being served")
    page = httpx.get(demo, headers={"Accept": "text/html"})
    assert "gradio" in page.text.lower()


def test_api_clients_that_ask_not_to_wait_get_a_retry_after(runtime_registry: RegistryServer, tmp_path: Path) -> None:
    user, _, _ = push(runtime_registry, quick_hello(tmp_path, idle_timeout=300), "async")
    response = http(runtime_registry.url).post(f"/api/v1/repos/{user}/async/predict", json={"inputs": {"name": "a"}},
                                               headers={"Prefer": "respond-async"})
    assert (response.status_code, response.json()["status"], response.headers["retry-after"]) == (503, "starting", "2")


def test_a_model_that_fails_to_load_reports_why(any_runtime_registry: RegistryServer, tmp_path: Path) -> None:
    bundle = quick_hello(tmp_path)
    (bundle / "predict.py").write_text("raise OSError('weights are corrupt')\n")
    user, _, _ = push(any_runtime_registry, bundle, "broken")
    response = predict(any_runtime_registry, f"{user}/broken", "x")
    assert response.status_code == 502
    assert "the model failed to load: OSError: weights are corrupt" in response.json()["detail"]
    assert status(any_runtime_registry, f"{user}/broken")["state"] == "failed"


def test_a_failed_build_is_reported_and_the_previous_version_keeps_serving(any_runtime_registry: RegistryServer,
                                                                           tmp_path: Path) -> None:
    user, token, first = push(any_runtime_registry, quick_hello(tmp_path, idle_timeout=300), "builds")
    assert predict(any_runtime_registry, f"{user}/builds", "one").status_code == 200
    broken = quick_hello(tmp_path / "v2")
    (broken / "requirements.txt").write_text("-r elsewhere.txt\n")
    with pack_bundle(broken) as packed:
        push_packed(http(any_runtime_registry.url, token), f"{user}/builds", "v2", packed)
    failed = http(any_runtime_registry.url).post(f"/api/v1/repos/{user}/builds@v2/predict", json={"inputs": {"name": "x"}},
                                             timeout=60)
    assert failed.status_code == 502
    assert "build failed: requirements.txt:1: options such as -r are not supported" in failed.json()["detail"]
    assert predict(any_runtime_registry, f"{user}/builds", "still").json()["digest"] == first


def test_a_crashed_registry_adopts_its_running_workers(runtime_registry: RegistryServer, tmp_path: Path) -> None:
    user, _, _ = push(runtime_registry, quick_hello(tmp_path, idle_timeout=300), "survivor")
    assert predict(runtime_registry, f"{user}/survivor", "before").status_code == 200
    [worker] = status(runtime_registry, f"{user}/survivor")["workers"]
    runtime_registry.crash()
    assert pid_alive(pid_of(worker))
    runtime_registry.start()
    assert status(runtime_registry, f"{user}/survivor")["state"] == "running"
    assert predict(runtime_registry, f"{user}/survivor", "after").json()["outputs"] == {"greeting": "Hello, after."}
    assert [w["id"] for w in status(runtime_registry, f"{user}/survivor")["workers"]] == [worker["id"]]
    runtime_registry.stop()
    wait_for(lambda: not pid_alive(pid_of(worker)), "a clean shutdown stopping its workers")


HOSTILE_MODEL = '''
import json, os, socket


def attempt(action):
    try:
        action()
        return "allowed"
    except Exception as error:
        return f"blocked: {type(error).__name__}"


def predict(targets):
    def connect():
        with socket.create_connection(("127.0.0.1", targets["port"]), timeout=3):
            pass

    def read(path):
        return lambda: open(path, "rb").read(1)

    def write(path):
        def go():
            with open(path, "w") as out:
                out.write("owned")
        return go

    return {
        "network": attempt(connect),
        "registry_database": attempt(read(targets["database"])),
        "other_bundle": attempt(read(targets["other_bundle"])),
        "credentials": attempt(read(targets["credentials"])),
        "write_own_bundle": attempt(write("planted.txt")),
        "write_outside": attempt(write(targets["outside"])),
        "write_temp": attempt(write("/tmp/scratch.txt")),
    }
'''


def test_hostile_model_code_stays_in_its_sandbox(runtime_registry: RegistryServer, tmp_path: Path) -> None:
    from modelhall.adapters.runtimes.sandbox import bwrap_path

    if bwrap_path() is None:
        from conftest import unavailable

        unavailable("bubblewrap is not installed: apt-get install bubblewrap")
    user, _, other_digest = push(runtime_registry, quick_hello(tmp_path / "innocent", idle_timeout=300), "innocent")
    assert predict(runtime_registry, f"{user}/innocent", "x").status_code == 200  # unpacks the other bundle
    hostile = tmp_path / "hostile"
    hostile.mkdir()
    (hostile / "predict.py").write_text(HOSTILE_MODEL)
    (hostile / "modelhall.yaml").write_text("name: hostile\nruntime: {adapter: python, entrypoint: predict.py:predict}\n"
                                            "inputs: [{name: targets, type: json}]\noutputs: [{name: report, type: json}]\n")
    owner, _, _ = push(runtime_registry, hostile, "hostile")
    secret = tmp_path / "credentials.json"
    secret.write_text('{"token": "mh_secret"}')
    outside = Path(__file__).resolve().parent / f".planted-{other_digest[7:19]}"  # a writable place outside /tmp
    targets = {
        "port": runtime_registry.port,
        "database": str(runtime_registry.data_dir / "modelhall.db"),
        "other_bundle": str(runtime_registry.data_dir / "bundles" / other_digest.replace(":", "-") / "modelhall.yaml"),
        "credentials": str(secret),
        "outside": str(outside),
    }
    response = http(runtime_registry.url).post(f"/api/v1/repos/{owner}/hostile/predict",
                                               json={"inputs": {"targets": targets}}, timeout=120)
    report = response.json()["outputs"]["report"]
    assert report.pop("write_temp") == "allowed"
    assert {k: v for k, v in report.items() if not v.startswith("blocked")} == {}
    assert not outside.exists()


def runs_of(registry: RegistryServer, repository: str, token: str | None = None, **filters: str) -> list[dict]:
    return http(registry.url, token).get(f"/api/v1/repos/{repository}/runs", params=filters).json()


def test_every_prediction_is_in_the_run_history(any_runtime_registry: RegistryServer, tmp_path: Path) -> None:
    user, token, digest = push(any_runtime_registry, quick_hello(tmp_path, idle_timeout=300), "history")
    repository = f"{user}/history"
    assert predict(any_runtime_registry, repository, "Ann", token).status_code == 200  # wakes it: cold
    assert predict(any_runtime_registry, repository, "Ben", token).status_code == 200
    failed = http(any_runtime_registry.url).post(f"/api/v1/repos/{repository}/predict",
                                             json={"inputs": {"name": "x" * 101}})
    assert failed.status_code == 422
    Client(f"{any_runtime_registry.demo_url}/demo/{repository}/", verbose=False, download_files=str(tmp_path / "dl"),
           httpx_kwargs={"timeout": 120}).predict("Cat", "excited", api_name="/predict")
    wait_for(lambda: len(runs_of(any_runtime_registry, repository, token)) == 4, "four runs recorded")
    newest_first = runs_of(any_runtime_registry, repository, token)
    demo, refused, warm, cold = newest_first
    assert (cold["source"], cold["status"], cold["cold"], cold["caller"]) == ("api", "succeeded", True, user)
    assert (cold["inputs"], cold["outputs"], cold["digest"]) == ({"name": "Ann", "style": "plain"},
                                                                 {"greeting": "Hello, Ann."}, digest)
    assert (warm["cold"], warm["outputs"]) == (False, {"greeting": "Hello, Ben."})
    assert (refused["status"], refused["caller"], refused["caller_hidden"]) == ("failed", None, False)
    assert "name: must be at most 100 characters" in refused["error"]
    assert (demo["source"], demo["outputs"]) == ("demo", {"greeting": "Hello, Cat!!"})
    assert [r["id"] for r in runs_of(any_runtime_registry, repository, token, status="failed")] == [refused["id"]]
    assert [r["id"] for r in runs_of(any_runtime_registry, repository, token, source="demo")] == [demo["id"]]
    _, stranger = any_runtime_registry.user()
    assert http(any_runtime_registry.url, stranger).get(f"/api/v1/repos/{repository}/runs").status_code == 403
    seen_by_stranger = http(any_runtime_registry.url, stranger).get(f"/api/v1/repos/{repository}/runs/{cold['id']}")
    assert (seen_by_stranger.json()["caller"], seen_by_stranger.json()["caller_hidden"]) == (None, True)


def test_runs_are_timed_by_their_request_and_the_first_after_a_wake_is_cold(runtime_registry: RegistryServer,
                                                                           tmp_path: Path) -> None:
    """A demo's page load wakes the model; its first Run is the cold run, not the page. Every run is
    dated when its request came (before the wake it caused), and the history is in that order."""
    user, token, _ = push(runtime_registry, quick_hello(tmp_path, idle_timeout=300), "timed")
    repository = f"{user}/timed"
    opened = httpx.get(f"{runtime_registry.url}/demo/{repository}/", headers={"Accept": "text/html"},
                       follow_redirects=True)
    assert opened.status_code == 503  # the starting page
    wait_for(lambda: status(runtime_registry, repository)["state"] == "running", "the demo's wake")
    demo = Client(f"{runtime_registry.demo_url}/demo/{repository}/", verbose=False,
                  download_files=str(tmp_path / "dl"), httpx_kwargs={"timeout": 120})
    demo.predict("First", "plain", api_name="/predict")
    demo.predict("Second", "plain", api_name="/predict")
    client = http(runtime_registry.url, token)
    queued = client.post(f"/api/v1/repos/{repository}/runs", json={"inputs": {"name": "Queued"}}).json()
    wait_for(lambda: client.get(queued["url"]).json()["status"] == "succeeded", "the async run")
    assert predict(runtime_registry, repository, "Last", token).status_code == 200
    wait_for(lambda: len(runs_of(runtime_registry, repository, token)) == 4, "four runs recorded")
    newest_first = runs_of(runtime_registry, repository, token)
    assert [(run["source"], run["inputs"]["name"]) for run in newest_first] == [
        ("api", "Last"), ("async", "Queued"), ("demo", "Second"), ("demo", "First")]
    created = [run["created_at"] for run in newest_first]
    assert created == sorted(created, reverse=True) and len(set(created)) == 4
    assert all(run["created_at"] <= run["finished_at"] for run in newest_first)
    assert [run["cold"] for run in newest_first if run["source"] != "async"] == [False, False, True]

    owner, token, _ = push(runtime_registry, quick_hello(tmp_path / "second", idle_timeout=300), "woken")
    woken_by_api = f"{owner}/woken"
    assert predict(runtime_registry, woken_by_api, "Wake", token).status_code == 200
    wait_for(lambda: runs_of(runtime_registry, woken_by_api, token), "the run recorded")
    [run] = runs_of(runtime_registry, woken_by_api, token)
    [worker] = status(runtime_registry, woken_by_api)["workers"]
    assert run["cold"] is True
    assert datetime.fromisoformat(run["created_at"]) < datetime.fromisoformat(worker["started_at"])


def test_file_outputs_are_kept_in_the_blob_store(runtime_registry: RegistryServer, tmp_path: Path) -> None:
    user, token, _ = push(runtime_registry, template_path("image-to-image"), "winter")
    beach = (template_path("image-to-image") / "examples" / "beach.png").read_bytes()
    answer = http(runtime_registry.url, token).post(
        f"/api/v1/repos/{user}/winter/predict", timeout=120,
        json={"inputs": {"photo": {"data": base64.b64encode(beach).decode(), "name": "beach.png"}}})
    assert answer.status_code == 200, answer.text
    wait_for(lambda: runs_of(runtime_registry, f"{user}/winter", token), "the run being recorded")
    [run] = runs_of(runtime_registry, f"{user}/winter", token)
    photo, output = run["inputs"]["photo"], run["outputs"]["output"]
    assert (photo["name"], photo["size"]) == ("beach.png", len(beach))
    stored = http(runtime_registry.url, token).get(f"/api/v1/repos/{user}/winter/runs/{run['id']}/files/{photo['digest']}")
    assert stored.content == beach
    image = http(runtime_registry.url, token).get(f"/api/v1/repos/{user}/winter/runs/{run['id']}/files/{output['digest']}")
    assert image.content.startswith(b"\x89PNG")


def test_async_runs_are_queued_and_followed(runtime_registry: RegistryServer, tmp_path: Path) -> None:
    user, token, _ = push(runtime_registry, quick_hello(tmp_path, idle_timeout=300), "queued")
    client = http(runtime_registry.url, token)
    started = client.post(f"/api/v1/repos/{user}/queued/runs", json={"inputs": {"name": "Async"}})
    assert started.status_code == 202 and started.json()["status"] == "queued"
    run_url = started.headers["location"]
    with client.stream("GET", started.json()["events"], timeout=120) as events:
        statuses = [json.loads(line[6:])["status"] for line in events.iter_lines() if line.startswith("data: ")]
    assert statuses[-1] == "succeeded" and set(statuses) <= {"queued", "running", "succeeded"}
    finished = client.get(run_url).json()
    assert (finished["source"], finished["outputs"], finished["caller"]) == ("async", {"greeting": "Hello, Async."}, user)
    assert len(runs_of(runtime_registry, f"{user}/queued", token)) == 1  # the worker's journal line is the same run


def test_queued_runs_survive_a_registry_restart(runtime_registry: RegistryServer, tmp_path: Path) -> None:
    user, token, digest = push(runtime_registry, quick_hello(tmp_path, idle_timeout=300), "restarted")
    runtime_registry.crash()
    run_id = runtime_registry.queue_run(f"{user}/restarted", digest, {"name": "Later"})
    runtime_registry.start()
    client = http(runtime_registry.url, token)
    wait_for(lambda: client.get(f"/api/v1/repos/{user}/restarted/runs/{run_id}").json()["status"] == "succeeded",
             "the queued run completing")
    assert client.get(f"/api/v1/repos/{user}/restarted/runs/{run_id}").json()["outputs"] == {
        "greeting": "Hello, Later."}


def test_logs_of_the_build_and_the_worker_are_for_writers_only(any_runtime_registry: RegistryServer,
                                                              tmp_path: Path) -> None:
    user, token, _ = push(any_runtime_registry, quick_hello(tmp_path, idle_timeout=300), "logged")
    assert predict(any_runtime_registry, f"{user}/logged", "x").status_code == 200
    owner = http(any_runtime_registry.url, token)
    assert "hello" in owner.get(f"/api/v1/repos/{user}/logged/deployment/logs").text
    assert owner.get(f"/api/v1/repos/{user}/logged/deployment/logs", params={"build": "true"}).status_code == 200
    _, stranger = any_runtime_registry.user()
    assert http(any_runtime_registry.url, stranger).get(f"/api/v1/repos/{user}/logged/deployment/logs").status_code == 403


def test_the_build_log_says_what_was_built_or_whose_environment_was_reused(runtime_registry: RegistryServer,
                                                                          tmp_path: Path) -> None:
    user, token, _ = push(runtime_registry, quick_hello(tmp_path, idle_timeout=300), "first")
    assert predict(runtime_registry, f"{user}/first", "x").status_code == 200
    owner = http(runtime_registry.url, token)
    built = owner.get(f"/api/v1/repos/{user}/first/deployment/logs", params={"build": "true"})
    assert built.status_code == 200 and re.search(r"^environment [0-9a-f]+: Python 3\.\d+", built.text)
    assert "\ninstalled: " in built.text and "reused" not in built.text
    other, other_token, _ = push(runtime_registry, quick_hello(tmp_path / "again", idle_timeout=300), "again")
    assert predict(runtime_registry, f"{other}/again", "y").status_code == 200
    reused = http(runtime_registry.url, other_token).get(f"/api/v1/repos/{other}/again/deployment/logs",
                                                         params={"build": "true"}).text
    assert reused.startswith("This version reused the environment built earlier for another model's version.\n")
    assert user not in reused and "first" not in reused  # the other repository is not named


def test_runs_and_logs_in_the_terminal(runtime_registry: RegistryServer, tmp_path: Path) -> None:
    from test_cli import cli

    user, token, _ = push(runtime_registry, quick_hello(tmp_path, idle_timeout=300), "terminal")
    assert predict(runtime_registry, f"{user}/terminal", "Dee", token).status_code == 200
    wait_for(lambda: runs_of(runtime_registry, f"{user}/terminal", token), "the run being recorded")
    listed = cli(runtime_registry, "runs", f"{user}/terminal", token=token, columns=80).stdout
    assert "succeeded" in listed and "Hello, Dee." in listed and "cold" in listed and user in listed
    assert "…" not in listed and re.search(r"^\d\d:\d\d:\d\d ", listed.splitlines()[1])
    assert "hello" in cli(runtime_registry, "logs", f"{user}/terminal", token=token).stdout
    refused = cli(runtime_registry, "logs", f"{user}/terminal", check=False)
    assert refused.returncode == 1 and "Not logged in" in refused.stderr


def test_beyond_the_concurrency_limit_and_queue_callers_get_429(any_runtime_registry: RegistryServer,
                                                               tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    bundle = quick_hello(tmp_path, idle_timeout=300, scaling=", concurrency: 1, queue: 1",
                         model="import time\n\ndef predict(name, style='plain'):\n    time.sleep(1.5)\n    return name\n")
    user, _, _ = push(any_runtime_registry, bundle, "busy")
    assert predict(any_runtime_registry, f"{user}/busy", "warm-up").status_code == 200
    with ThreadPoolExecutor(max_workers=4) as pool:
        responses = list(pool.map(lambda i: predict(any_runtime_registry, f"{user}/busy", f"n{i}"), range(4)))
    codes = sorted(r.status_code for r in responses)
    assert codes == [200, 200, 429, 429]
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.headers["retry-after"] == "2" and refused.json()["status"] == "busy"


def test_under_load_a_second_worker_starts_and_stops_again_when_idle(runtime_registry: RegistryServer,
                                                                     tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    bundle = quick_hello(tmp_path, idle_timeout=300)
    (bundle / "predict.py").write_text("import time, uuid\n\nWORKER = uuid.uuid4().hex\n\n"
                                       "def predict(name, style='plain'):\n    time.sleep(1.5)\n    return WORKER\n")
    spec = (bundle / "modelhall.yaml").read_text()
    (bundle / "modelhall.yaml").write_text(spec.replace(
        "scaling: {min: 0, max: 1, idle_timeout: 300}",
        f"scaling: {{min: 1, max: 2, idle_timeout: {IDLE_TIMEOUT}, concurrency: 1, queue: 8}}"))
    user, _, _ = push(runtime_registry, bundle, "elastic")
    first = predict(runtime_registry, f"{user}/elastic", "warm-up").json()["outputs"]["greeting"]
    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(lambda i: predict(runtime_registry, f"{user}/elastic", f"n{i}"), range(8)))
    assert [r.status_code for r in responses] == [200] * 8
    answered_by = {r.json()["outputs"]["greeting"] for r in responses}
    assert first in answered_by and len(answered_by) == 2  # the queue spilled over onto a second worker
    assert [w["state"] for w in status(runtime_registry, f"{user}/elastic")["workers"]] == ["ready", "ready"]
    wait_for(lambda: [w["state"] for w in status(runtime_registry, f"{user}/elastic")["workers"]] == ["ready",
                                                                                                     "stopped"],
             "the extra worker stopping when idle")
    assert status(runtime_registry, f"{user}/elastic")["state"] == "running"  # scaling.min keeps the first one
    assert predict(runtime_registry, f"{user}/elastic", "again").json()["outputs"]["greeting"] == first


def test_a_crashed_worker_is_restarted(runtime_registry: RegistryServer, tmp_path: Path) -> None:
    bundle = quick_hello(tmp_path, idle_timeout=300)
    (bundle / "predict.py").write_text("import os\n\ndef predict(name, style='plain'):\n"
                                       "    if name == 'die':\n        os._exit(3)\n    return name\n")
    user, _, _ = push(runtime_registry, bundle, "phoenix")
    assert predict(runtime_registry, f"{user}/phoenix", "a").status_code == 200
    [first] = status(runtime_registry, f"{user}/phoenix")["workers"]
    died = predict(runtime_registry, f"{user}/phoenix", "die")
    assert (died.status_code, died.json()["status"]) == (502, "crashed")
    wait_for(lambda: status(runtime_registry, f"{user}/phoenix")["state"] == "running"
             and len(status(runtime_registry, f"{user}/phoenix")["workers"]) == 2, "the worker being restarted")
    assert [w["state"] for w in status(runtime_registry, f"{user}/phoenix")["workers"]] == ["crashed", "ready"]
    assert predict(runtime_registry, f"{user}/phoenix", "back").json()["outputs"] == {"greeting": "back"}
    assert first["id"] not in [w["id"] for w in status(runtime_registry, f"{user}/phoenix")["workers"][1:]]


def test_a_crash_looping_model_ends_failed_with_its_last_output(runtime_registry: RegistryServer,
                                                               tmp_path: Path) -> None:
    bundle = quick_hello(tmp_path, idle_timeout=300)
    (bundle / "predict.py").write_text(
        "import os, sys, threading\n\nprint('segfault in native code (simulated)', flush=True)\n"
        "threading.Timer(5, lambda: os._exit(11)).start()  # after it is ready: a crash, not a failed start\n\n"
        "def predict(name, style='plain'):\n    return name\n")
    user, _, _ = push(runtime_registry, bundle, "looping")
    predict(runtime_registry, f"{user}/looping", "a")
    wait_for(lambda: status(runtime_registry, f"{user}/looping")["state"] == "failed", "giving up on the crash loop",
             seconds=120)
    final = status(runtime_registry, f"{user}/looping")
    assert final["detail"].startswith("the worker crashed 4 times in a row; its last output:")
    assert "segfault in native code (simulated)" in final["detail"]
    assert len(final["workers"]) == 4 and {w["state"] for w in final["workers"]} == {"crashed"}


def test_a_model_over_its_memory_limit_fails_that_prediction_only(runtime_registry: RegistryServer,
                                                                  tmp_path: Path) -> None:
    bundle = quick_hello(tmp_path, idle_timeout=300)
    (bundle / "predict.py").write_text("def predict(name, style='plain'):\n"
                                       "    if name == 'greedy':\n        hoard = bytearray(3 * 1024**3)\n"
                                       "        return str(len(hoard))\n    return name\n")
    spec = (bundle / "modelhall.yaml").read_text()
    (bundle / "modelhall.yaml").write_text(spec + "resources: {cpu: 1, memory: 1Gi}\n")
    user, _, _ = push(runtime_registry, bundle, "greedy")
    greedy = predict(runtime_registry, f"{user}/greedy", "greedy")
    assert greedy.status_code == 500
    assert greedy.json()["error"]["message"] == "the model failed: MemoryError: "
    assert predict(runtime_registry, f"{user}/greedy", "modest").json()["outputs"] == {"greeting": "modest"}


@pytest.fixture
def gpu_registry(database_kind: str, tmp_path: Path) -> Iterator[RegistryServer]:
    """A registry told this machine has no GPUs, whatever it really has (MODELHALL_GPUS)."""
    yield from serve_registry(database_kind, tmp_path / "registry", {"MODELHALL_GPUS": ""})


@pytest.mark.parametrize(("gpu", "expected"), [("{count: 1}", 503), ("{count: 1, cpu_fallback: true}", 200)])
def test_a_model_that_needs_a_gpu(gpu_registry: RegistryServer, tmp_path: Path, gpu: str, expected: int) -> None:
    bundle = quick_hello(tmp_path, idle_timeout=300)
    spec = (bundle / "modelhall.yaml").read_text()
    (bundle / "modelhall.yaml").write_text(spec + f"resources: {{cpu: 1, memory: 2Gi, gpu: {gpu}}}\n")
    user, _, _ = push(gpu_registry, bundle, "needs-gpu")
    response = predict(gpu_registry, f"{user}/needs-gpu", "x")
    if expected == 200:
        assert response.json()["outputs"] == {"greeting": "Hello, x."}
        return
    assert response.status_code == 503
    assert response.json() == {"status": "unschedulable", "detail": "no GPU available: the model needs 1, 0 of 0 are "
                               "free on this machine (set resources.gpu.cpu_fallback: true to run it on the CPU)"}
    assert status(gpu_registry, f"{user}/needs-gpu")["state"] == "unschedulable"
