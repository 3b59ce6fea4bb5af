"""Hostile workers and callers against the registry: each test is an attack that must fail.

The models here are the attacker's: they reach into the worker that runs them (the run journal,
its file map) to make the registry read a host file, adopt a forged run, hang, or reach other
workers. Callers try to pull hidden weights and code through the demo, and to make the platform
adopt a blob as a run's file. All of it runs with the sandbox on and, in CI, the registry as root.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import tempfile
import time
from pathlib import Path

import httpx
from conftest import RegistryServer, unavailable
from modelhall.templates import template_path
from oci_helpers import http
from test_runtime import push, quick_hello, runtime_registry, runs_of, status, wait_for  # noqa: F401 - a fixture

JOURNAL_THIEF = '''
import gc, json, os, pathlib, time

from modelhall.showcase.runner import RunJournal

STOLEN = "f" * 32


def predict(targets):
    """Make the registry copy a host file into the run history, and adopt a run in someone else's name."""
    journal_file = os.environ.get("MODELHALL_RUN_JOURNAL")  # where a worker's journal was a file
    forged = {"id": targets["forged_run"], "source": "api", "caller": targets["victim"], "cold": False,
              "status": "succeeded", "error": None, "inputs": {}, "duration_ms": 1.0, "finished_at": time.time(),
              "outputs": {"report": {"file": targets["secret_via_tmp"], "name": "loot.txt"}, "loot": None}}
    if journal_file:
        with open(journal_file, "a") as journal:
            journal.write(json.dumps(forged) + "\\n")
    for journal in [o for o in gc.get_objects() if isinstance(o, RunJournal)]:
        journal._files[STOLEN] = pathlib.Path(targets["secret"])
        honest = journal.read

        def read(after, limit, honest=honest):
            if len(honest(0, 10)) < 2:  # the lies come once both honest runs are journaled: a forged entry's
                return honest(after, limit)  # number moves the cursor past any later run of this worker
            return [*honest(after, limit), dict(forged, seq=10**9, context="forged"), "garbage", {"seq": "x"}]

        journal.read = read
    return {"report": {"file": targets["secret_via_tmp"], "name": "loot.txt"},
            "loot": {"file": STOLEN, "name": "loot.txt", "size": 10}}
'''

SILENT = '''
import gc, os, time

from modelhall.showcase.runner import RunJournal


def predict(targets):
    """Make collecting this worker's runs hang: a FIFO where the journal file was, a journal that never answers."""
    journal_file = os.environ.get("MODELHALL_RUN_JOURNAL")
    if journal_file:
        if os.path.exists(journal_file):
            os.unlink(journal_file)
        os.mkfifo(journal_file)
    for journal in [o for o in gc.get_objects() if isinstance(o, RunJournal)]:
        journal.read = lambda after, limit: time.sleep(3600)
    return {"report": "silent"}
'''

SOCKET_THIEF = '''
import os, socket


def predict(targets):
    """Reach the other workers: list their sockets, call one, replace it."""
    report = {}
    try:
        report["list"] = sorted(os.listdir(targets["sockets"]))
    except OSError as error:
        report["list"] = f"blocked: {type(error).__name__}"
    try:
        with socket.socket(socket.AF_UNIX) as other:
            other.settimeout(3)
            other.connect(targets["victim_socket"])
            other.sendall(b"GET /spec HTTP/1.0\\r\\n\\r\\n")
            report["call"] = other.recv(200).decode(errors="replace")
    except OSError as error:
        report["call"] = f"blocked: {type(error).__name__}"
    try:
        os.unlink(targets["victim_socket"])
        with socket.socket(socket.AF_UNIX) as fake:
            fake.bind(targets["victim_socket"])
        report["replace"] = "done"
    except OSError as error:
        report["replace"] = f"blocked: {type(error).__name__}"
    return {"report": report}
'''


def require_sandbox() -> None:
    if shutil.which("bwrap") is None:
        unavailable("bubblewrap is not installed: apt-get install bubblewrap")


def hostile_bundle(directory: Path, model: str, outputs: str = "[{name: report, type: json}]") -> Path:
    directory.mkdir(parents=True)
    (directory / "predict.py").write_text(model)
    (directory / "modelhall.yaml").write_text(
        "name: hostile\nruntime: {adapter: python, entrypoint: predict.py:predict}\n"
        f"inputs: [{{name: targets, type: json}}]\noutputs: {outputs}\n"
        "scaling: {min: 0, max: 1, idle_timeout: 300}\n")
    return directory


def run_hostile(registry: RegistryServer, owner: str, name: str, targets: dict) -> httpx.Response:
    return http(registry.url).post(f"/api/v1/repos/{owner}/{name}/predict", json={"inputs": {"targets": targets}},
                                   timeout=120)


def every_run_file(registry: RegistryServer, repository: str, token: str) -> list[bytes]:
    files = []
    for run in runs_of(registry, repository, token):
        for value in [*run["inputs"].values(), *(run["outputs"] or {}).values()]:
            if isinstance(value, dict) and "digest" in value:
                files.append(http(registry.url, token).get(
                    f"/api/v1/repos/{repository}/runs/{run['id']}/files/{value['digest']}").content)
    return files


def test_a_worker_cannot_make_the_registry_read_a_host_file_or_forge_a_run(runtime_registry: RegistryServer,
                                                                        tmp_path: Path) -> None:
    require_sandbox()
    owner, token, _ = push(runtime_registry, hostile_bundle(tmp_path / "thief", JOURNAL_THIEF,
                                                            "[{name: report, type: json}, {name: loot, type: json}]"),
                           "thief")
    victim, _ = runtime_registry.user()
    secret = runtime_registry.data_dir / "secret.key"
    forged_run = "00000000-0000-4000-8000-000000000001"
    targets = {"secret": str(secret), "secret_via_tmp": "/tmp/../../../secret.key", "victim": victim,
               "forged_run": forged_run}
    assert run_hostile(runtime_registry, owner, "thief", targets).status_code == 200
    assert run_hostile(runtime_registry, owner, "thief", targets).status_code == 200  # its journal is patched now
    wait_for(lambda: len(runs_of(runtime_registry, f"{owner}/thief", token)) == 2, "the two honest runs recorded")
    wait_for(lambda: status(runtime_registry, f"{owner}/thief", token)["workers"][0].get("journal_error"),
             "the refused entries noted on the worker")

    runs = runs_of(runtime_registry, f"{owner}/thief", token)
    assert forged_run not in [run["id"] for run in runs]
    assert {run["caller"] for run in runs} == {None}  # anonymous callers, as the tickets say; never the victim
    assert secret.read_bytes() not in every_run_file(runtime_registry, f"{owner}/thief", token)
    for run in runs:
        assert run["outputs"]["report"]["missing"] and run["outputs"]["loot"]["missing"]
    error = status(runtime_registry, f"{owner}/thief", token)["workers"][0]["journal_error"]
    assert "not one the registry issued" in error and "not as the schema says" in error
    assert secret.read_text() not in error


def test_a_silent_worker_costs_only_its_own_runs(runtime_registry: RegistryServer, tmp_path: Path) -> None:
    require_sandbox()
    user, token, _ = push(runtime_registry, quick_hello(tmp_path / "innocent"), "innocent")
    owner, _, _ = push(runtime_registry, hostile_bundle(tmp_path / "silent", SILENT), "silent")
    assert run_hostile(runtime_registry, owner, "silent", {}).status_code == 200
    assert run_hostile(runtime_registry, owner, "silent", {}).status_code == 200
    answer = http(runtime_registry.url, token).post(f"/api/v1/repos/{user}/innocent/predict",
                                                    json={"inputs": {"name": "Ada"}}, timeout=120)
    assert answer.status_code == 200, answer.text
    for _ in range(5):  # the API keeps answering while the reaper waits on the silent worker
        started = time.monotonic()
        assert httpx.get(f"{runtime_registry.url}/v2/", timeout=10).status_code in (200, 401)
        assert time.monotonic() - started < 3
        time.sleep(0.5)
    wait_for(lambda: len(runs_of(runtime_registry, f"{user}/innocent", token)) == 1, "the innocent run recorded")
    wait_for(lambda: status(runtime_registry, f"{user}/innocent")["state"] == "sleeping",
             "the innocent model put to sleep by the reaper")


def test_a_worker_cannot_reach_or_replace_another_workers_socket(runtime_registry: RegistryServer,
                                                                tmp_path: Path) -> None:
    require_sandbox()
    user, token, _ = push(runtime_registry, quick_hello(tmp_path / "victim", idle_timeout=300), "victim", public=False)
    assert http(runtime_registry.url, token).post(f"/api/v1/repos/{user}/victim/predict",
                                                  json={"inputs": {"name": "Ada"}}, timeout=120).status_code == 200
    tag = hashlib.sha256(str(runtime_registry.data_dir.resolve()).encode()).hexdigest()[:10]
    sockets = Path(tempfile.gettempdir()) / f"modelhall-{tag}"
    [victim_socket] = list(sockets.glob("*.sock"))
    owner, _, _ = push(runtime_registry, hostile_bundle(tmp_path / "hostile", SOCKET_THIEF), "hostile")
    answer = run_hostile(runtime_registry, owner, "hostile", {"sockets": str(sockets),
                                                               "victim_socket": str(victim_socket)})
    report = answer.json()["outputs"]["report"]
    assert all(value.startswith("blocked") for value in report.values()), report
    assert victim_socket.is_socket()
    again = http(runtime_registry.url, token).post(f"/api/v1/repos/{user}/victim/predict",
                                                   json={"inputs": {"name": "Bo"}}, timeout=120)
    assert again.json()["outputs"] == {"greeting": "Hello, Bo."}


def test_the_gateway_never_passes_a_caller_to_the_workers_own_api(runtime_registry: RegistryServer,
                                                                  tmp_path: Path) -> None:
    user, token, _ = push(runtime_registry, quick_hello(tmp_path, idle_timeout=300), "journal")
    assert http(runtime_registry.url, token).post(f"/api/v1/repos/{user}/journal/predict",
                                                  json={"inputs": {"name": "Ada"}}, timeout=120).status_code == 200
    demo = http(runtime_registry.demo_url, token)  # the demos' own origin
    demo.follow_redirects = True
    for path in ("_internal/journal", "./_internal/journal", "x/../_internal/journal", "%5Finternal/journal"):
        answer = demo.get(f"/demo/{user}/journal/{path}", headers={"X-Modelhall-Internal": "1"})
        assert answer.status_code == 404, path
        assert "Ada" not in answer.text


def hidden_weights_bundle(directory: Path) -> tuple[Path, bytes]:
    bundle = quick_hello(directory, idle_timeout=300)
    weights = b"SECRET-WEIGHTS-" + bytes(range(64))
    (bundle / "weights").mkdir(exist_ok=True)
    (bundle / "weights" / "model.bin").write_bytes(weights)
    return bundle, weights


def test_demo_file_routes_serve_neither_weights_nor_code(runtime_registry: RegistryServer, tmp_path: Path) -> None:
    bundle, weights = hidden_weights_bundle(tmp_path)
    user, token, digest = push(runtime_registry, bundle, "hidden")
    http(runtime_registry.url, token).patch(f"/api/v1/repos/{user}/hidden",
                                            json={"weights": "hidden"}).raise_for_status()
    viewer = http(runtime_registry.demo_url)  # the demos' own origin
    viewer.follow_redirects = True
    assert http(runtime_registry.url).post(f"/api/v1/repos/{user}/hidden/predict", json={"inputs": {"name": "Ada"}},
                                           timeout=120).status_code == 200
    assert viewer.get(f"/demo/{user}/hidden/", timeout=120).status_code == 200  # the demo itself is open
    unpacked = runtime_registry.data_dir / "bundles" / digest.replace(":", "-")
    code = (bundle / "predict.py").read_bytes()
    for path in ("weights/model.bin", f"{unpacked}/weights/model.bin", "predict.py", f"{unpacked}/predict.py",
                 "modelhall.yaml"):
        for route in ("gradio_api/file=", "file="):
            answer = viewer.get(f"/demo/{user}/hidden/{route}{path}", timeout=60)
            assert answer.status_code in (403, 404), (route, path, answer.status_code)
            assert weights not in answer.content and code not in answer.content


def test_a_caller_cannot_make_a_blob_a_runs_file(runtime_registry: RegistryServer, tmp_path: Path) -> None:
    bundle, weights = hidden_weights_bundle(tmp_path)
    user, token, _ = push(runtime_registry, bundle, "adopt")
    http(runtime_registry.url, token).patch(f"/api/v1/repos/{user}/adopt", json={"weights": "hidden"}).raise_for_status()
    layer = "sha256:" + hashlib.sha256(weights).hexdigest()
    _, stranger = runtime_registry.user()
    client = http(runtime_registry.url, stranger)
    started = client.post(f"/api/v1/repos/{user}/adopt/runs",
                          json={"inputs": {"name": {"digest": layer, "name": "model.bin", "size": len(weights)}}})
    assert started.status_code == 202, started.text
    run_url = started.json()["url"]
    wait_for(lambda: client.get(run_url).json()["status"] in ("succeeded", "failed"), "the async run ending")
    run = client.get(run_url).json()
    assert client.get(f"{run_url}/files/{layer}").status_code == 404
    assert base64.b64encode(weights).decode() not in str(run) and weights.decode(errors="ignore") not in str(run)


def test_files_the_platform_stored_for_a_run_are_still_served(runtime_registry: RegistryServer) -> None:
    user, token, _ = push(runtime_registry, template_path("image-to-image"), "winter")
    beach = (template_path("image-to-image") / "examples" / "beach.png").read_bytes()
    client = http(runtime_registry.url, token)
    started = client.post(f"/api/v1/repos/{user}/winter/runs",
                          json={"inputs": {"photo": {"data": base64.b64encode(beach).decode(), "name": "beach.png"}}})
    run_url = started.json()["url"]
    wait_for(lambda: client.get(run_url).json()["status"] in ("succeeded", "failed"), "the async run ending", 120)
    run = client.get(run_url).json()
    assert run["status"] == "succeeded", run["error"]
    assert client.get(f"{run_url}/files/{run['inputs']['photo']['digest']}").content == beach
    assert client.get(f"{run_url}/files/{run['outputs']['output']['digest']}").content.startswith(b"\x89PNG")


FROZEN = '''
import os, signal


def predict(targets):
    """Ignore the time limit by stopping the whole worker, so nothing inside it can answer."""
    os.kill(os.getpid(), signal.SIGSTOP)
    return {"report": "never"}
'''


def test_a_worker_past_its_time_limit_is_cut_off_by_the_gateway(runtime_registry: RegistryServer,
                                                                tmp_path: Path) -> None:
    bundle = hostile_bundle(tmp_path / "frozen", FROZEN)
    spec = bundle / "modelhall.yaml"
    spec.write_text(spec.read_text().replace("runtime: {", "runtime: {timeout: 1, "))
    owner, _, _ = push(runtime_registry, bundle, "frozen")
    http(runtime_registry.url).post(f"/api/v1/repos/{owner}/frozen/predict", json={"inputs": {"targets": {}}},
                                    headers={"Prefer": "respond-async"})
    wait_for(lambda: status(runtime_registry, f"{owner}/frozen")["state"] == "running", "the model waking")
    answer = run_hostile(runtime_registry, owner, "frozen", {})
    assert (answer.status_code, answer.json()["status"]) == (504, "timeout")
    assert "longer than 11 s" in answer.json()["detail"]
