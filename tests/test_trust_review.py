"""A review of the workers-as-endpoints change, played as the attacker: each test is a hole that must stay shut.

The models here are hostile (they patch the worker they run in), the callers anonymous or strangers.
"""

from __future__ import annotations

import time
from pathlib import Path

from conftest import RegistryServer
from oci_helpers import http
from test_runtime import push, quick_hello, runtime_registry, runs_of, status, wait_for  # noqa: F401 - a fixture
from test_trust_boundary import hostile_bundle, run_hostile

# A json output shaped like a file (data, name, mime_type) whose data is not base64: the registry's
# async runner decodes it, raises, and (unguarded) stops carrying out queued runs for every model.
BAD_FILE_OUTPUT = '''
def predict(targets):
    return {"report": {"data": "abc", "name": "x.txt", "mime_type": "text/plain"}}
'''


def test_one_models_answer_cannot_stop_async_runs_for_everyone(runtime_registry: RegistryServer,
                                                                tmp_path: Path) -> None:
    owner, _, _ = push(runtime_registry, hostile_bundle(tmp_path / "breaker", BAD_FILE_OUTPUT), "breaker")
    user, token, _ = push(runtime_registry, quick_hello(tmp_path / "innocent", idle_timeout=300), "innocent")
    hostile = http(runtime_registry.url).post(f"/api/v1/repos/{owner}/breaker/runs",
                                              json={"inputs": {"targets": {}}})
    assert hostile.status_code == 202, hostile.text
    wait_for(lambda: http(runtime_registry.url).get(hostile.json()["url"]).json()["status"] in ("succeeded", "failed"),
             "the hostile async run ending (succeeded or failed, never 'running' for ever)", 90)
    client = http(runtime_registry.url, token)
    innocent = client.post(f"/api/v1/repos/{user}/innocent/runs", json={"inputs": {"name": "Ada"}})
    wait_for(lambda: client.get(innocent.json()["url"]).json()["status"] == "succeeded",
             "another model's async run still carried out", 90)


# Every file an entry names is fetched even after the round's deadline, each waiting out the per-call
# timeout; and only files that arrived count against MAX_FILES_PER_RUN. One run naming thousands of
# files that never come holds the reaper (and with it every other model's sleep) for hours.
FILE_STALLER = '''
import gc, time

from modelhall.showcase.runner import RunJournal


def predict(targets):
    for journal in [o for o in gc.get_objects() if isinstance(o, RunJournal)]:
        honest = journal.read

        def read(after, limit, honest=honest):
            entries = honest(after, limit)
            for entry in entries:
                entry["outputs"] = {f"f{i}": {"file": "%032x" % i, "name": "a"} for i in range(3000)}
            return entries

        journal.read = read
        journal.file = lambda file_id: time.sleep(3600)
    return {"report": "stalling"}
'''


def test_a_worker_naming_files_it_never_serves_does_not_hold_the_reaper(runtime_registry: RegistryServer,
                                                                        tmp_path: Path) -> None:
    owner, otoken, _ = push(runtime_registry, hostile_bundle(tmp_path / "staller", FILE_STALLER), "staller")
    answer = run_hostile(runtime_registry, owner, "staller", {})
    assert answer.status_code == 200, answer.text
    user, token, _ = push(runtime_registry, quick_hello(tmp_path / "innocent"), "innocent")
    answer = http(runtime_registry.url, token).post(f"/api/v1/repos/{user}/innocent/predict",
                                                    json={"inputs": {"name": "Ada"}}, timeout=120)
    assert answer.status_code == 200, answer.text
    # a round may spend its budget (30 s) on the staller; then the innocent model must be put to sleep
    wait_for(lambda: status(runtime_registry, f"{user}/innocent")["state"] == "sleeping",
             "the innocent model put to sleep by the reaper", 90)
    started = time.monotonic()
    runs = runs_of(runtime_registry, f"{owner}/staller", otoken)  # the owner's own listing is bounded too
    assert time.monotonic() - started < 40
    for run in runs:
        missing = [v for v in (run["outputs"] or {}).values() if isinstance(v, dict) and v.get("missing")]
        assert len(missing) <= 3000


# Every request the gateway proxies to a demo carries a fresh signed ticket, page views and assets
# included (none of them counted against a share link's quota). A worker that keeps them journals a
# run for each: forged runs in the viewers' names, and a run count (the gallery's ranking) of its choosing.
TICKET_HARVESTER = '''
import gc, pathlib

from starlette.routing import Mount

from modelhall.showcase.runner import RunContext, RunJournal


def predict(targets):
    journal = next(o for o in gc.get_objects() if isinstance(o, RunJournal))
    for mount in [o for o in gc.get_objects() if isinstance(o, Mount) and o.path == ""]:
        inner = mount.app

        async def harvest(scope, receive, send, inner=inner):
            ticket = dict(scope.get("headers") or []).get(b"x-modelhall-context")
            if scope["type"] == "http" and ticket:
                journal.record(RunContext(ticket=ticket.decode(), source="demo"), {"forged": True},
                               {"report": "a run nobody made"}, None, 0.001, pathlib.Path("/tmp/x"))
            await inner(scope, receive, send)

        mount.app = harvest
    return {"report": "harvesting"}
'''


def test_a_demo_page_view_is_not_a_ticket_for_a_run(runtime_registry: RegistryServer, tmp_path: Path) -> None:
    owner, token, _ = push(runtime_registry, hostile_bundle(tmp_path / "harvester", TICKET_HARVESTER), "harvester")
    answer = run_hostile(runtime_registry, owner, "harvester", {})
    assert answer.status_code == 200, answer.text
    viewer = http(runtime_registry.demo_url)
    viewer.follow_redirects = True
    for _ in range(10):  # page views and assets: no prediction among them
        viewer.get(f"/demo/{owner}/harvester/no-such-asset.js", timeout=60)
    time.sleep(2)
    runs = runs_of(runtime_registry, f"{owner}/harvester", token)
    forged = [run for run in runs if run["inputs"].get("forged")]
    assert forged == [], f"{len(forged)} runs made of demo requests that were no predictions"


def test_a_caller_cannot_freeze_a_models_run_history_with_a_number_json_cannot_write(
        runtime_registry: RegistryServer, tmp_path: Path) -> None:
    """A predict request with NaN (which Python's JSON reader takes) is refused by the model, and journaled as sent:
    the worker's journal page then cannot be written as JSON (500), and no later run of it is ever recorded."""
    user, token, _ = push(runtime_registry, quick_hello(tmp_path, idle_timeout=300), "nan")
    stranger = http(runtime_registry.url)
    poisoned = stranger.post(f"/api/v1/repos/{user}/nan/predict", content=b'{"inputs": {"name": NaN}}',
                             headers={"content-type": "application/json"}, timeout=120)
    assert poisoned.status_code == 422, poisoned.text
    assert stranger.post(f"/api/v1/repos/{user}/nan/predict", json={"inputs": {"name": "Ada"}},
                         timeout=120).status_code == 200
    wait_for(lambda: any(run["outputs"] == {"greeting": "Hello, Ada."} for run in runs_of(runtime_registry,
                                                                                          f"{user}/nan", token)),
             "the honest run after the poisoned one recorded")
