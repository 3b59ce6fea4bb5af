"""A share link's holder against the registry: each test is something a curious reviewer tries.

They try to learn the repository's name, to see versions the link was not pinned to, to run the
model past the link's quota by another route, and the model tries to learn who the reviewer is.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import RegistryServer, serve_registry
from modelhall.bundle import pack_bundle
from oci_helpers import http, push_packed
from test_runtime import quick_hello
from test_sharing import share, urlpath

# A hostile model: it records the headers of every HTTP request its worker gets, and answers with them.
HEADER_SPY = '''
import json
from starlette.requests import Request

SEEN = []
_init = Request.__init__


def _spy(self, scope, *args, **kwargs):
    _init(self, scope, *args, **kwargs)
    if scope.get("type") == "http":
        SEEN.append({key.decode().lower(): value.decode() for key, value in scope.get("headers", [])})


Request.__init__ = _spy


def predict(name, style="plain"):
    return json.dumps(SEEN[-1] if SEEN else {})
'''
IDENTIFYING = {"User-Agent": "ReviewerBrowser/7.1 (Reviewer Two's laptop)", "Referer": "https://mail.example/inbox",
               "Accept-Language": "fr-CH,fr;q=0.9", "X-Forwarded-For": "203.0.113.7", "X-Real-IP": "203.0.113.7",
               "Forwarded": "for=203.0.113.7", "Cookie": "tracker=reviewer-2", "DNT": "1",
               "Sec-CH-UA-Platform": '"macOS"', "Origin": "https://conference.example", "Via": "1.1 campus-proxy"}


@pytest.fixture(scope="module")
def link_registry(database_kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    yield from serve_registry(database_kind, tmp_path_factory.mktemp("links") / "registry",
                              {"MODELHALL_REAPER_INTERVAL": "1"})


def holder(registry: RegistryServer, link: dict, demo: bool = False) -> httpx.Client:
    """A reviewer's API client that sends the link as a header, on the registry's or the demo's origin."""
    return httpx.Client(base_url=registry.demo_url if demo else registry.url, timeout=180,
                        headers={"X-Modelhall-Share": urlpath(link["url"])[3:]})


def push_tag(registry: RegistryServer, token: str, repository: str, tag: str, bundle: Path) -> str:
    with pack_bundle(bundle) as packed:
        return push_packed(http(registry.url, token), repository, tag, packed)


def new_model(registry: RegistryServer, tmp_path: Path, name: str, model: str | None = None,
              tag: str = "latest", public: bool = False) -> tuple[str, str, str, httpx.Client]:
    user, token = registry.user()
    digest = push_tag(registry, token, f"{user}/{name}", tag, quick_hello(tmp_path, idle_timeout=300, model=model))
    owner = http(registry.url, token)
    if public:
        owner.patch(f"/api/v1/repos/{user}/{name}", json={"visibility": "public"}).raise_for_status()
    return user, token, digest, owner


def test_link_holders_read_no_repository_name_in_any_refusal(link_registry: RegistryServer, tmp_path: Path) -> None:
    user, _, digest, owner = new_model(link_registry, tmp_path, "secret-name")
    for options in ({"anonymous": True}, {}):  # anonymous, or one whose holder was never told the name
        link = share(owner, f"{user}/secret-name", **options)
        api, demo = holder(link_registry, link), holder(link_registry, link, demo=True)
        repository_id = api.get("/api/v1/shared").json()["demo"].split("/")[2].split("@")[0]
        asleep = api.post("/api/v1/shared/predict", json={"inputs": {"name": "x"}},
                          headers={"Prefer": "respond-async"})
        other = demo.get(f"/live/{repository_id}@sha256:{'0' * 64}/config")
        tagged = demo.get(f"/live/{repository_id}@v7/config")
        asleep_demo = demo.post(f"/live/{repository_id}@{digest}/predict", json={"inputs": {"name": "x"}},
                                headers={"Prefer": "respond-async"})
        assert asleep.status_code == asleep_demo.status_code == 503 and other.status_code == tagged.status_code == 404
        for answer in (asleep, other, tagged, asleep_demo):
            assert user not in answer.text and "secret-name" not in answer.text, answer.text
    named = owner.post(f"/api/v1/repos/{user}/secret-name/predict", json={"inputs": {"name": "x"}},
                       headers={"Prefer": "respond-async"})
    assert named.status_code in (200, 503) and (named.status_code == 200 or f"{user}/secret-name" in named.text)


def test_a_link_holder_learns_neither_why_a_model_failed_nor_why_it_cannot_be_placed(
        link_registry: RegistryServer, tmp_path: Path) -> None:
    failing = "raise OSError('the weights at /srv/secret-name/model.bin are corrupt')\n"
    user, _, _, owner = new_model(link_registry, tmp_path / "a", "fails-to-load", model=failing)
    gpu_user, gpu_token = link_registry.user()
    bundle = quick_hello(tmp_path / "b", idle_timeout=300)
    with (bundle / "modelhall.yaml").open("a") as spec:
        spec.write("resources: {gpu: {count: 8}}\n")  # more than this machine has
    push_tag(link_registry, gpu_token, f"{gpu_user}/needs-gpus", "latest", bundle)
    gpu_owner = http(link_registry.url, gpu_token)
    for repository, author, status, generic, reason in (
            (f"{user}/fails-to-load", owner, 502, "the model could not start; its author can see why", "corrupt"),
            (f"{gpu_user}/needs-gpus", gpu_owner, 503, "the model cannot be placed on any machine now", "GPU")):
        link = share(author, repository, anonymous=True)
        refused = holder(link_registry, link).post("/api/v1/shared/predict", json={"inputs": {"name": "x"}})
        assert (refused.status_code, refused.json()["detail"]) == (status, generic)
        told = author.post(f"/api/v1/repos/{repository}/predict", json={"inputs": {"name": "x"}}, timeout=120)
        assert told.status_code == status and reason in told.json()["detail"]  # the author is told why


def test_a_pinned_link_shows_only_its_version(link_registry: RegistryServer, tmp_path: Path) -> None:
    user, token, first, owner = new_model(link_registry, tmp_path, "reviewed", tag="v1")
    bundle = quick_hello(tmp_path / "second", idle_timeout=300)
    (bundle / "README.md").write_text("# Camera-ready version with the reviewers' fixes\n")
    second = push_tag(link_registry, token, f"{user}/reviewed", "latest", bundle)
    link = share(owner, f"{user}/reviewed", pin="v1")
    api = holder(link_registry, link)
    versions = api.get(f"/api/v1/repos/{user}/reviewed/versions").json()
    assert [(v["tag"], v["digest"]) for v in versions] == [("v1", first)]
    assert api.get(f"/api/v1/repos/{user}/reviewed/versions/latest").status_code == 404
    assert api.get(f"/api/v1/repos/{user}/reviewed/versions/v1").status_code == 200
    card = api.get(f"/api/v1/repos/{user}/reviewed").json()
    assert (card["latest"]["digest"], card["latest_digest"]) == (first, first)
    assert second not in json.dumps([versions, card]) and "Camera-ready" not in api.get(
        f"/api/v1/repos/{user}/reviewed/versions/v1").text
    assert len(owner.get(f"/api/v1/repos/{user}/reviewed/versions").json()) == 2  # the author sees both


def test_an_unpinned_link_to_a_repository_without_latest_opens_its_newest(link_registry: RegistryServer,
                                                                           tmp_path: Path) -> None:
    user, _, digest, owner = new_model(link_registry, tmp_path, "no-latest", tag="v1")
    link = share(owner, f"{user}/no-latest")
    opened = httpx.get(f"{link_registry.url}{urlpath(link['url'])}?to=demo")
    assert opened.status_code == 303 and opened.headers["location"].endswith(f"@{digest}/")
    shared = holder(link_registry, link).get("/api/v1/shared")
    assert shared.status_code == 200 and shared.json()["digest"] == digest


def test_every_route_to_the_model_counts_against_the_quota(link_registry: RegistryServer, tmp_path: Path) -> None:
    user, _, digest, owner = new_model(link_registry, tmp_path, "counted")
    link = share(owner, f"{user}/counted", run_quota=1)
    api, demo = holder(link_registry, link), holder(link_registry, link, demo=True)
    assert api.post("/api/v1/shared/predict", json={"inputs": {"name": "one"}}).status_code == 200
    prefix = api.get("/api/v1/shared").json()["demo"]
    gradio = {"data": ["two", "plain"]}
    attempts = {
        "gradio call": demo.post(f"{prefix}gradio_api/call/predict", json=gradio),
        "gradio run": demo.post(f"{prefix}gradio_api/run/predict", json=gradio),
        "gradio call, doubled slash": demo.post(f"{prefix}gradio_api//call/predict", json=gradio),
        "gradio call, encoded": demo.post(f"{prefix}gradio_api/call%2Fpredict", json=gradio),
        "worker's predict API": demo.post(f"{prefix}predict", json={"inputs": {"name": "two"}}),
        "worker's predict API, dotted": demo.post(f"{prefix}./predict/", json={"inputs": {"name": "two"}}),
        "by name": demo.post(f"/demo/{user}/counted/predict", json={"inputs": {"name": "two"}}),
        "async run": api.post(f"/api/v1/repos/{user}/counted/runs", json={"inputs": {"name": "two"}}),
    }
    assert {route: answer.status_code for route, answer in attempts.items()} == dict.fromkeys(attempts, 429)
    [entry] = owner.get(f"/api/v1/repos/{user}/counted/shares").json()
    assert (entry["runs_used"], entry["state"]) == (1, "used up")


def test_runs_through_a_link_to_a_public_model_are_the_links(link_registry: RegistryServer, tmp_path: Path) -> None:
    user, _, _, owner = new_model(link_registry, tmp_path, "public-reviewed", public=True)
    link = share(owner, f"{user}/public-reviewed", run_quota=3, label="R1")
    api = holder(link_registry, link)
    assert api.post("/api/v1/shared/predict", json={"inputs": {"name": "Rev"}}).status_code == 200
    assert api.get("/api/v1/shared").json()["runs_left"] == 2
    [entry] = owner.get(f"/api/v1/repos/{user}/public-reviewed/shares").json()
    assert entry["runs_used"] == 1
    runs = owner.get(f"/api/v1/repos/{user}/public-reviewed/runs", params={"share_link": link["id"]}).json()
    assert [run["caller"] for run in runs] == [f"share-link:{link['id']}"]
    assert [run["caller"] for run in api.get("/api/v1/shared/runs").json()] == [None]  # it sees its own, unnamed


def test_the_model_learns_nothing_about_a_links_reviewer(link_registry: RegistryServer, tmp_path: Path) -> None:
    user, _, _, owner = new_model(link_registry, tmp_path, "spy", model=HEADER_SPY)
    link = share(owner, f"{user}/spy", anonymous=True)
    api, demo = holder(link_registry, link), holder(link_registry, link, demo=True)
    through_api = api.post("/api/v1/shared/predict", json={"inputs": {"name": "x"}}, headers=IDENTIFYING)
    prefix = api.get("/api/v1/shared").json()["demo"]
    through_demo = demo.post(f"{prefix}predict", json={"inputs": {"name": "x"}}, headers=IDENTIFYING)
    for answer in (through_api, through_demo):
        assert answer.status_code == 200, answer.text
        seen = json.loads(answer.json()["outputs"]["greeting"])
        assert "content-type" in seen  # the spy saw the request
        leaked = {key for key in seen if key in {k.lower() for k in IDENTIFYING} or key == "x-modelhall-share"}
        assert leaked == set() and "203.0.113.7" not in json.dumps(seen)
    mine = owner.post(f"/api/v1/repos/{user}/spy/predict", json={"inputs": {"name": "x"}},
                      headers={"User-Agent": "the author's own client"})
    assert "the author's own client" in mine.json()["outputs"]["greeting"]  # members are forwarded as before
