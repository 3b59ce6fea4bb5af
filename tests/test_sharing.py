"""Share links for reviewers, scoped tokens and visibility, end to end through a live registry and its workers."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import RegistryServer, serve_registry
from modelhall.bundle import pack_bundle
from oci_helpers import http, push_packed
from test_cli import cli
from test_demo_origin import exchange
from test_runtime import push, quick_hello

SHARE_URL = re.compile(r"^http://127\.0\.0\.1:\d+/s/mhs_[A-Za-z0-9_-]{40,}$")


@pytest.fixture(scope="module")
def sharing_registry(database_kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    yield from serve_registry(database_kind, tmp_path_factory.mktemp("sharing") / "registry",
                              {"MODELHALL_REAPER_INTERVAL": "1"})


def share(owner: httpx.Client, repository: str, **options: object) -> dict:
    created = owner.post(f"/api/v1/repos/{repository}/shares", json=options)
    assert created.status_code == 201, created.text
    assert SHARE_URL.match(created.json()["url"])
    return created.json()


def reviewer(registry: RegistryServer) -> httpx.Client:
    """A fresh browser: no login, cookies kept, redirects followed by hand."""
    return httpx.Client(base_url=registry.url, follow_redirects=False, timeout=180)


def test_an_anonymous_link_shows_no_owner_anywhere(sharing_registry: RegistryServer, tmp_path: Path) -> None:
    user, token, digest = push(sharing_registry, quick_hello(tmp_path, idle_timeout=300), "blind", public=False)
    owner = http(sharing_registry.url, token)
    link = share(owner, f"{user}/blind", anonymous=True, label="ICML R2")
    browser = reviewer(sharing_registry)
    opened = browser.get(urlpath(link["url"]))
    assert opened.status_code == 303
    demo = opened.headers["location"]
    assert re.fullmatch(rf"/live/\d+@{digest}/", demo)
    entered = browser.get(demo)  # on to the demo origin, with a ticket for the link
    demo_url, cookie = exchange(sharing_registry, entered.headers["location"])
    on_demo = httpx.Client(base_url=demo_url, headers={"Cookie": cookie}, timeout=180)
    answers = [opened, entered, on_demo.get("", headers={"Accept": "text/html"}), on_demo.get("config"),
               browser.get("/api/v1/shared")]
    predicted = browser.post("/api/v1/shared/predict", json={"inputs": {"name": "Reviewer 2"}},
                             headers={"Origin": sharing_registry.url})  # as the browser sends it
    assert predicted.status_code == 200 and predicted.json()["outputs"] == {"greeting": "Hello, Reviewer 2."}
    answers += [predicted, browser.get("/api/v1/shared/runs")]
    for answer in answers:
        assert user not in answer.text, answer.request.url
    shared = browser.get("/api/v1/shared").json()
    assert (shared["owner"], shared["repository"], shared["anonymous"]) == (None, None, True)
    assert shared["spec"]["name"] == "hello"
    assert browser.get(f"/api/v1/repos/{user}/blind/runs").status_code == 200  # only the link's own runs
    assert browser.get(f"/v2/{user}/blind/manifests/latest").status_code == 403  # never the weights

    link_runs = owner.get(f"/api/v1/repos/{user}/blind/runs", params={"share_link": link["id"]}).json()
    assert [(run["caller"], run["inputs"]) for run in link_runs] == [
        (f"share-link:{link['id']}", {"name": "Reviewer 2", "style": "plain"})]  # the run, not who made it
    listed = owner.get(f"/api/v1/repos/{user}/blind/shares").json()
    assert [(entry["label"], entry["runs_used"], entry["state"]) for entry in listed] == [("ICML R2", 1, "active")]


def urlpath(url: str) -> str:
    return "/" + url.split("/", 3)[3]


def test_a_pinned_link_keeps_answering_with_its_version(sharing_registry: RegistryServer, tmp_path: Path) -> None:
    bundle = quick_hello(tmp_path, idle_timeout=300)
    user, token, first = push(sharing_registry, bundle, "snapshot", public=False)
    owner = http(sharing_registry.url, token)
    link = share(owner, f"{user}/snapshot", pin="latest")
    (bundle / "predict.py").write_text("def predict(name, style='plain'):\n    return 'v2 says hi'\n")
    with pack_bundle(bundle) as packed:
        second = push_packed(owner, f"{user}/snapshot", "latest", packed)
    assert second != first
    holder = httpx.Client(base_url=sharing_registry.url, headers={"X-Modelhall-Share": urlpath(link["url"])[3:]},
                          timeout=180)
    answer = holder.post("/api/v1/shared/predict", json={"inputs": {"name": "Pia"}})
    assert (answer.json()["digest"], answer.json()["outputs"]) == (first, {"greeting": "Hello, Pia."})
    assert holder.post(f"/api/v1/repos/{user}/snapshot@{second}/predict",
                       json={"inputs": {"name": "x"}}).status_code == 404  # the newer version is not shared
    assert owner.post(f"/api/v1/repos/{user}/snapshot/predict", json={"inputs": {"name": "x"}},
                      timeout=180).json()["outputs"] == {"greeting": "v2 says hi"}


def test_quota_expiry_and_revocation(sharing_registry: RegistryServer, tmp_path: Path) -> None:
    user, token, _ = push(sharing_registry, quick_hello(tmp_path, idle_timeout=300), "limited", public=False)
    owner = http(sharing_registry.url, token)
    quota = share(owner, f"{user}/limited", run_quota=2)
    holder = httpx.Client(base_url=sharing_registry.url, headers={"X-Modelhall-Share": urlpath(quota["url"])[3:]},
                          timeout=180)
    codes = [holder.post("/api/v1/shared/predict", json={"inputs": {"name": "q"}}).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    refused = holder.post("/api/v1/shared/predict", json={"inputs": {"name": "q"}}).json()
    assert refused["detail"] == "this share link has used up its runs; ask the model's author for more"
    assert holder.get("/api/v1/shared").json()["runs_left"] == 0

    revoked = share(owner, f"{user}/limited")
    assert owner.delete(f"/api/v1/repos/{user}/limited/shares/{revoked['id']}").json()["state"] == "revoked"
    gone = reviewer(sharing_registry).get(urlpath(revoked["url"]))
    assert (gone.status_code, gone.json()["detail"]) == (410, "this share link was revoked by the model's author")
    refused_header = httpx.get(f"{sharing_registry.url}/api/v1/shared",
                               headers={"X-Modelhall-Share": urlpath(revoked["url"])[3:]})
    assert refused_header.status_code == 401
    unknown = reviewer(sharing_registry).get("/s/mhs_" + "x" * 43)
    assert (unknown.status_code, unknown.json()["detail"]) == (404, "this share link does not exist")
    assert owner.post(f"/api/v1/repos/{user}/limited/shares", json={"pin": "v9"}).status_code == 404


def test_tokens_have_scopes_a_last_use_and_can_be_revoked(sharing_registry: RegistryServer) -> None:
    user, admin_token = sharing_registry.user("admin")
    admin = http(sharing_registry.url, admin_token)
    created = admin.post("/api/v1/tokens", json={"name": "ci", "scope": "read", "expires_in_days": 7})
    assert created.status_code == 201 and created.json()["token"].startswith("mh_")
    assert created.json()["scopes"] == ["read"]
    read_only = http(sharing_registry.url, created.json()["token"])
    assert read_only.get("/api/v1/whoami").json() == {"name": user, "scopes": ["read"]}
    assert read_only.get("/api/v1/tokens").status_code == 403  # managing tokens needs admin
    listed = {entry["name"]: entry for entry in admin.get("/api/v1/tokens").json()}
    assert listed["ci"]["last_used_at"] is not None and listed["ci"]["token"] is None  # never shown again
    assert admin.delete(f"/api/v1/tokens/{listed['ci']['id']}").json()["revoked"] is True
    assert read_only.get("/api/v1/whoami").status_code == 401
    assert admin.post("/api/v1/tokens", json={"scope": "root"}).status_code == 422


def test_share_and_visibility_from_the_terminal(sharing_registry: RegistryServer, tmp_path: Path) -> None:
    user, token, _ = push(sharing_registry, quick_hello(tmp_path, idle_timeout=300), "cli-shared", public=False)
    created = cli(sharing_registry, "share", "create", f"{user}/cli-shared", "--expires", "2w", "--anonymous",
                  "--pin", "latest", "--quota", "5", "--label", "area chair", token=token)
    url = created.stdout.strip().splitlines()[-1]
    assert SHARE_URL.match(url) and "(anonymous), pinned to sha256:" in created.stdout
    listed = cli(sharing_registry, "share", "list", f"{user}/cli-shared", token=token).stdout
    assert "area chair" in listed and "active" in listed and "0/5" in listed
    [link] = http(sharing_registry.url, token).get(f"/api/v1/repos/{user}/cli-shared/shares").json()
    cli(sharing_registry, "share", "revoke", f"{user}/cli-shared", str(link["id"]), token=token)
    assert "revoked" in cli(sharing_registry, "share", "list", f"{user}/cli-shared", token=token).stdout
    changed = cli(sharing_registry, "visibility", f"{user}/cli-shared", "internal", "--weights", "hidden",
                  token=token).stdout
    assert changed.strip() == f"{user}/cli-shared: internal, weights hidden"
    bad = cli(sharing_registry, "share", "create", f"{user}/cli-shared", "--expires", "soon", token=token,
              check=False)
    assert bad.returncode != 0 and "not a duration like 12h, 30d, 2w or never" in bad.stderr


def test_a_collaborator_sees_one_private_repository(sharing_registry: RegistryServer, tmp_path: Path) -> None:
    user, token, _ = push(sharing_registry, quick_hello(tmp_path, idle_timeout=300), "together", public=False)
    guest, guest_token = sharing_registry.user()
    owner, guest_client = http(sharing_registry.url, token), http(sharing_registry.url, guest_token)
    assert guest_client.get(f"/api/v1/repos/{user}/together").status_code == 404
    assert owner.put(f"/api/v1/repos/{user}/together/collaborators/{guest}",
                     json={"role": "reader"}).status_code == 204
    assert guest_client.get(f"/api/v1/repos/{user}/together").status_code == 200
    assert guest_client.get(f"/v2/{user}/together/manifests/latest").status_code == 200  # a reader may pull
    assert guest_client.patch(f"/api/v1/repos/{user}/together", json={"description": "x"}).status_code == 403
    assert [r["name"] for r in guest_client.get("/api/v1/repos", params={"mine": "true"}).json()] == [
        f"{user}/together"]
    assert owner.delete(f"/api/v1/repos/{user}/together/collaborators/{guest}").status_code == 204
    assert guest_client.get(f"/api/v1/repos/{user}/together").status_code == 404
