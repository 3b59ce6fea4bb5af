"""Model content on its own origin: a hostile model's page, cookies and files against a logged-in viewer.

The attacker pushes a public model whose code makes its worker serve ``pwn.html``: a page that calls the
registry's API with whatever credentials the browser holds (create an admin token, make the victim's
private repository public); and ``cookies.html``, which sets ``modelhall_session`` both as a header
and from a script (as every other answer of the worker does in its headers). The victim, logged in
to the registry, opens them. Demos live on the demo origin, reached from the registry
with a ticket, so none of it may act as the victim or touch the registry's session.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from gradio_client import Client
from playwright.sync_api import Browser, BrowserContext, Route, expect

from conftest import RegistryServer, serve_registry, unique
from model_bundles import png_bytes
from modelhall.bundle import pack_bundle
from modelhall.registry.auth.demo_tickets import DemoPass, issue_ticket
from oci_helpers import http, push_packed
from test_browser import OUTPUT_TIMEOUT_MS, browser, run  # noqa: F401 - browser is a fixture
from test_runtime import quick_hello, runs_of, wait_for

HOSTILE_SPEC = """name: hostile
runtime: {adapter: python, entrypoint: predict.py:predict}
inputs: [{name: targets, type: json}]
outputs: [{name: report, type: json}, {name: page, type: file}, {name: fake, type: file},
          {name: vector, type: file}, {name: picture, type: image}]
scaling: {min: 0, max: 1, idle_timeout: 300}
"""

HOSTILE_MODEL = '''
import pathlib

import starlette.applications
from PIL import Image

HERE = pathlib.Path(__file__).parent
serve = starlette.applications.Starlette.__call__


async def page(send, name, *headers):
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/html; charset=utf-8"), *headers]})
    await send({"type": "http.response.body", "body": (HERE / name).read_bytes()})


async def hostile(self, scope, receive, send):
    """Every app in the worker: .../pwn.html is the attack, .../cookies.html sets the registry's session
    cookie (in its headers and from a script), and every other answer sets it too."""
    if scope["type"] != "http":
        return await serve(self, scope, receive, send)

    async def with_cookie(message):
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []),
                                  (b"set-cookie", b"modelhall_session=set-by-the-model; Path=/")]
        await send(message)

    if scope["path"].endswith("/pwn.html"):
        return await page(send, "pwn.html")
    if scope["path"].endswith("/cookies.html"):
        return await page(with_cookie, "cookies.html",
                          (b"set-cookie", b"modelhall_session=set-by-the-model-for-the-api; Path=/api"))
    await serve(self, scope, receive, with_cookie)


starlette.applications.Starlette.__call__ = hostile


def predict(targets):
    return {"report": {"ran": True}, "page": str(HERE / "pwn.html"), "fake": str(HERE / "cat.png"),
            "vector": str(HERE / "logo.svg"), "picture": Image.open(HERE / "real.png")}
'''

PWN_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>pwn</title></head><body><pre id="log"></pre>
<script>
const REGISTRY = "__REGISTRY__", VICTIM = "__VICTIM__";
async function attempt(label, url, options) {
  try {
    const answer = await fetch(url, {credentials: "include", ...options});
    return `${label}: ${answer.status}`;
  } catch (error) {
    return `${label}: ${error.name}`;
  }
}
(async () => {
  const json = {"Content-Type": "application/json"}, results = [];
  for (const base of ["", REGISTRY]) {
    results.push(await attempt(`token ${base}`, `${base}/api/v1/tokens`,
                               {method: "POST", headers: json, body: JSON.stringify({name: "pwned", scope: "admin"})}));
    results.push(await attempt(`simple token ${base}`, `${base}/api/v1/tokens`,
                               {method: "POST", headers: {"Content-Type": "text/plain"},
                                body: JSON.stringify({name: "pwned-simple", scope: "admin"})}));
    results.push(await attempt(`public ${base}`, `${base}/api/v1/repos/${VICTIM}`,
                               {method: "PATCH", headers: json, body: JSON.stringify({visibility: "public"})}));
  }
  document.getElementById("log").textContent = results.join("\\n");
  document.title = "done";
})();
</script></body></html>"""


COOKIE_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>cookies</title></head><body><script>
document.cookie = "modelhall_session=set-by-a-script; path=/";
document.cookie = "modelhall_session=set-by-a-script-for-the-api; path=/api";
document.title = "done";
</script></body></html>"""


@dataclass
class World:
    registry: RegistryServer
    victim: str
    victim_token: str  # admin: it may list its tokens
    diary: str  # the victim's private model
    attacker: str
    attacker_token: str
    hostile: str  # the attacker's public model


def hostile_bundle(directory: Path, registry_url: str, victim_repository: str) -> Path:
    directory.mkdir(parents=True)
    (directory / "modelhall.yaml").write_text(HOSTILE_SPEC)
    (directory / "predict.py").write_text(HOSTILE_MODEL)
    (directory / "pwn.html").write_text(PWN_PAGE.replace("__REGISTRY__", registry_url)
                                        .replace("__VICTIM__", victim_repository))
    (directory / "cookies.html").write_text(COOKIE_PAGE)
    (directory / "cat.png").write_text("<html><script>alert('not a cat')</script></html>")
    (directory / "logo.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>')
    (directory / "real.png").write_bytes(png_bytes())
    return directory


@pytest.fixture(scope="module")
def world(database_kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    data = tmp_path_factory.mktemp("demo-origin")
    for registry in serve_registry(database_kind, data / "registry", {"MODELHALL_REAPER_INTERVAL": "1"}):
        victim, victim_token = registry.user("admin", name=unique("victim"))
        diary = f"{victim}/diary"
        with pack_bundle(quick_hello(data, idle_timeout=300)) as packed:
            push_packed(http(registry.url, victim_token), diary, "latest", packed)  # private: the default
        attacker, attacker_token = registry.user(name=unique("attacker"))
        hostile = f"{attacker}/hostile"
        attacker_api = http(registry.url, attacker_token)
        with pack_bundle(hostile_bundle(data / "hostile", registry.url, diary)) as packed:
            push_packed(attacker_api, hostile, "latest", packed)
        attacker_api.patch(f"/api/v1/repos/{hostile}", json={"visibility": "public"}).raise_for_status()
        for repository, token, inputs in ((diary, victim_token, {"name": "warm"}), (hostile, None, {"targets": {}})):
            woken = http(registry.url, token).post(f"/api/v1/repos/{repository}/predict", json={"inputs": inputs},
                                                   timeout=180)
            assert woken.status_code == 200, woken.text
        yield World(registry, victim, victim_token, diary, attacker, attacker_token, hostile)


def logged_in(browser: Browser, registry: RegistryServer, user: str) -> BrowserContext:  # noqa: F811
    """A browser holding the registry's session cookie for ``user``, as its login leaves it."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.add_cookies([{"name": "modelhall_session", "value": registry.session_cookie(user), "url": registry.url,
                          "httpOnly": True, "sameSite": "Lax"}])
    who = context.request.get(f"{registry.url}/api/v1/whoami").json()["name"]
    assert who == user  # the session works: what follows is not refused for want of one
    return context


def open_hostile_page(context: BrowserContext, world: World, name: str = "pwn.html") -> str:
    """The victim opens a hostile page from the registry's URL; returns where it ended up running."""
    page = context.new_page()
    page.goto(f"{world.registry.url}/demo/{world.hostile}/{name}")
    page.wait_for_function("document.title === 'done'", timeout=OUTPUT_TIMEOUT_MS)
    return page.url


# (a)
def test_a_hostile_demo_page_cannot_act_as_its_viewer(browser: Browser, world: World) -> None:  # noqa: F811
    context = logged_in(browser, world.registry, world.victim)
    where = open_hostile_page(context, world)
    assert where.startswith(f"{world.registry.demo_url}/live/")  # the model's page runs on the demo origin
    victim = http(world.registry.url, world.victim_token)
    assert victim.get(f"/api/v1/repos/{world.diary}").json()["visibility"] == "private"
    assert not [token["name"] for token in victim.get("/api/v1/tokens").json() if token["name"].startswith("pwned")]
    context.close()


# (b)
def test_a_model_cannot_set_the_registry_session_cookie(browser: Browser, world: World) -> None:  # noqa: F811
    context = logged_in(browser, world.registry, world.victim)
    session = registry_sessions(context, world.registry)
    open_hostile_page(context, world, "cookies.html")
    assert registry_sessions(context, world.registry) == session  # neither the header nor the script reached it
    assert context.request.get(f"{world.registry.url}/api/v1/whoami").json()["name"] == world.victim
    entry = httpx.get(f"{world.registry.url}/demo/{world.hostile}/cookies.html")
    page = httpx.get(entry.headers["location"])
    assert page.status_code == 200 and "set-cookie" not in page.headers  # the gateway drops a model's cookies
    predicted = http(world.registry.url).post(f"/api/v1/repos/{world.hostile}/predict",
                                              json={"inputs": {"targets": {}}}, timeout=120)
    assert predicted.status_code == 200 and "set-cookie" not in predicted.headers  # on the registry's origin too
    context.close()


def registry_sessions(context: BrowserContext, registry: RegistryServer) -> list[str]:
    """Every ``modelhall_session`` the browser would send to the registry's API and its root."""
    cookies = context.cookies([f"{registry.url}/api/v1/whoami", f"{registry.url}/"])
    return sorted(cookie["value"] for cookie in cookies if cookie["name"] == "modelhall_session")


def test_a_logged_in_viewer_opens_a_private_demo_in_the_browser(browser: Browser, world: World) -> None:  # noqa: F811
    context = logged_in(browser, world.registry, world.victim)
    page = context.new_page()
    page.goto(f"{world.registry.url}/demo/{world.diary}/")
    page.get_by_label("Your name").fill("Owner", timeout=OUTPUT_TIMEOUT_MS)
    run(page)
    expect(page.get_by_label("Greeting")).to_have_value("Hello, Owner.", timeout=OUTPUT_TIMEOUT_MS)
    assert page.url.startswith(f"{world.registry.demo_url}/live/") and "ticket" not in page.url
    context.close()


# (c)
def test_the_registry_answers_with_nosniff_and_a_content_security_policy(world: World) -> None:
    registry, victim = world.registry, http(world.registry.url, world.victim_token)
    anonymous = httpx.Client(base_url=registry.url)
    answers = {
        "catalog": anonymous.get("/api/v1/repos"), "not found": anonymous.get(f"/api/v1/repos/{world.diary}"),
        "oci": anonymous.get("/v2/"), "logout page": anonymous.get("/auth/logout"), "docs": anonymous.get("/docs"),
        "forged request": anonymous.post("/auth/logout", headers={"Origin": "https://evil.example",
                                                                   "Cookie": "modelhall_session=x"}),
        "a worker's answer": victim.post(f"/api/v1/repos/{world.diary}/predict", json={"inputs": {"name": "C"}},
                                         timeout=120),
    }
    for what, answer in answers.items():
        assert answer.headers.get("x-content-type-options") == "nosniff", what
        policy = answer.headers.get("content-security-policy", "")
        assert "default-src 'none'" in policy and "frame-ancestors 'self'" in policy, (what, policy)
    assert "script-src 'self' 'unsafe-inline';" in answers["docs"].headers["content-security-policy"]
    assert "style-src 'unsafe-inline'" in answers["logout page"].headers["content-security-policy"]


LOOPBACK = ("http://127.0.0.1:", "http://localhost:")


def test_the_api_docs_load_offline_under_their_policy(browser: Browser, world: World) -> None:  # noqa: F811
    """Swagger UI and ReDoc come from the registry itself: they show the operations with every request
    that leaves loopback refused, and their policy blocks none of their scripts or styles (only ReDoc's
    footer logo, which it would fetch from its CDN)."""
    context = browser.new_context()
    left: list[str] = []

    def only_loopback(route: Route) -> None:
        if route.request.url.startswith(LOOPBACK) or route.request.url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            left.append(route.request.url)
            route.abort()

    context.route("**/*", only_loopback)
    page = context.new_page()
    refused: list[str] = []
    page.on("console", lambda message: refused.append(message.text) if "Content Security Policy" in message.text
            else None)
    page.goto(f"{world.registry.url}/docs")
    expect(page.get_by_role("heading", name=re.compile("Modelhall registry"))).to_be_visible(
        timeout=OUTPUT_TIMEOUT_MS)
    expect(page.locator(".opblock-summary-path", has_text="/api/v1/repos/{name}/versions").first
           ).to_be_visible()
    page.goto(f"{world.registry.url}/redoc")
    expect(page.get_by_text("/api/v1/repos/{name}/versions").first).to_be_attached(
        timeout=OUTPUT_TIMEOUT_MS)
    assert left == []
    assert [message for message in refused if not message.startswith("Loading the image 'https://cdn.redoc.ly/")] == []
    context.close()


# (d)
def test_files_a_model_makes_are_downloads_unless_they_are_media(world: World) -> None:
    answer = http(world.registry.url).post(f"/api/v1/repos/{world.hostile}/predict",
                                           json={"inputs": {"targets": {"for": "files"}}}, timeout=120)
    assert answer.status_code == 200, answer.text
    owner = http(world.registry.url, world.attacker_token)
    wait_for(lambda: any(run["inputs"] == {"targets": {"for": "files"}}
                         for run in runs_of(world.registry, world.hostile, world.attacker_token)), "the run recorded")
    [made] = [run for run in runs_of(world.registry, world.hostile, world.attacker_token)
              if run["inputs"] == {"targets": {"for": "files"}}]
    files = f"/api/v1/repos/{world.hostile}/runs/{made['id']}/files"
    served = {name: owner.get(f"{files}/{made['outputs'][name]['digest']}") for name in ("page", "fake", "vector",
                                                                                         "picture")}
    for name in ("page", "fake", "vector"):  # HTML; HTML that says it is a PNG; an SVG with a script
        headers = served[name].headers
        assert headers["content-type"] == "application/octet-stream", name
        assert headers["content-disposition"].startswith("attachment;"), name
        assert headers["x-content-type-options"] == "nosniff", name
    assert served["page"].headers["content-disposition"] == (
        "attachment; filename=\"pwn.html\"; filename*=UTF-8''pwn.html")
    picture = served["picture"].headers
    assert (picture["content-type"], picture["x-content-type-options"]) == ("image/png", "nosniff")
    assert picture["content-disposition"].startswith("inline;")


# (e)
def ticket_of(location: str) -> tuple[str, str]:
    """The demo origin's URL a registry redirect leads to, without its ticket, and the ticket."""
    url, _, query = location.partition("?ticket=")
    return url, query


def exchange(registry: RegistryServer, location: str) -> tuple[str, str]:
    """Take a ticket URL to the demo origin: the clean URL it sends back to, and the pass cookie it sets."""
    assert location.startswith(f"{registry.demo_url}/live/") and "?ticket=" in location, location
    answer = httpx.get(location)
    assert answer.status_code == 303, answer.text
    key_path = urlsplit(location).path
    cookie = answer.headers["set-cookie"]
    assert re.fullmatch(rf"modelhall_demo=[\w.-]+; Path={re.escape(key_path)}; Max-Age=\d+; HttpOnly; "
                        r"SameSite=None; Secure; Partitioned", cookie), cookie
    assert answer.headers["location"] == key_path
    return registry.demo_url + answer.headers["location"], cookie.split(";")[0]


def test_a_logged_in_viewer_reaches_a_private_demo_through_a_ticket(world: World) -> None:
    registry = world.registry
    session = {"Cookie": f"modelhall_session={registry.session_cookie(world.victim)}"}
    opened = httpx.get(f"{registry.url}/demo/{world.diary}/", headers=session)
    assert opened.status_code == 303
    demo, cookie = exchange(registry, opened.headers["location"])
    page = httpx.get(demo, headers={"Cookie": cookie, "Accept": "text/html"})
    assert page.status_code == 200 and "gradio" in page.text.lower()
    assert httpx.get(f"{demo}config").status_code == 404  # no pass, no private demo
    assert httpx.get(f"{demo}config", headers=session).status_code == 404  # the registry's session counts for nothing
    again = httpx.get(opened.headers["location"])
    assert (again.status_code, again.json()["detail"]) == (
        403, "this demo ticket has been used already: open the demo again from the registry or the gallery")
    assert httpx.get(f"{registry.url}/demo/{world.diary}/").status_code == 404  # nobody: not there at all

    asked = http(registry.url, world.victim_token).post(f"/api/v1/repos/{world.diary}/demo-ticket")
    assert asked.json()["api"] == f"{registry.demo_url}/demo/{world.diary}/"
    demo, cookie = exchange(registry, asked.json()["url"])  # what the gallery puts in its iframe
    assert httpx.get(f"{demo}config", headers={"Cookie": cookie}).status_code == 200


def test_forged_expired_and_other_demos_tickets_are_refused(world: World) -> None:
    registry = world.registry
    victim = http(registry.url, world.victim_token)
    diary_url, diary_ticket = ticket_of(victim.post(f"/api/v1/repos/{world.diary}/demo-ticket").json()["url"])
    _, hostile_ticket = ticket_of(victim.post(f"/api/v1/repos/{world.hostile}/demo-ticket").json()["url"])
    key = urlsplit(diary_url).path.split("/")[2]
    mine = DemoPass(key, user_id=registry.user_id(world.victim))
    tickets = {
        "this demo ticket is not valid": issue_ticket("an attacker's own key, as long as the registry's", mine),
        "this demo ticket has expired (a ticket lasts 60 s)": issue_ticket(registry.signing_key, mine, seconds=-1),
        "this demo ticket is for another demo": hostile_ticket,
    }
    for reason, ticket in tickets.items():
        refused = httpx.get(diary_url, params={"ticket": ticket})
        assert (refused.status_code, refused.json()["detail"]) == (
            403, f"{reason}: open the demo again from the registry or the gallery"), reason
        assert "set-cookie" not in refused.headers
    assert httpx.get(diary_url, params={"ticket": diary_ticket}).status_code == 303  # the real one still works


def test_an_anonymous_share_link_reaches_the_demo_through_a_ticket(world: World, tmp_path: Path) -> None:
    registry = world.registry
    link = http(registry.url, world.victim_token).post(f"/api/v1/repos/{world.diary}/shares",
                                                       json={"anonymous": True}).json()
    reviewer = httpx.Client(base_url=registry.url, timeout=120)  # a fresh browser: cookies kept
    opened = reviewer.get(f"/s/{link['url'].rsplit('/', 1)[1]}", params={"to": "demo"})
    assert opened.status_code == 303 and opened.headers["location"].startswith("/live/")
    entered = reviewer.get(opened.headers["location"])
    demo, cookie = exchange(registry, entered.headers["location"])
    answers = [httpx.get(demo, headers={"Cookie": cookie, "Accept": "text/html"}),
               httpx.get(f"{demo}config", headers={"Cookie": cookie})]
    assert [answer.status_code for answer in answers] == [200, 200]
    assert all(world.victim not in answer.text for answer in [opened, entered, *answers])
    share = {"X-Modelhall-Share": link["url"].rsplit("/", 1)[1]}
    api = httpx.post(f"{registry.url}/api/v1/shared/demo-ticket", headers=share).json()["api"]
    assert api == demo and world.victim not in api
    client = Client(api, headers=share, verbose=False, download_files=str(tmp_path), httpx_kwargs={"timeout": 120})
    assert client.predict("Reviewer", "plain", api_name="/predict") == "Hello, Reviewer."


# (f)
def test_gradio_client_calls_a_private_demo_on_the_demo_origin_with_a_token(world: World, tmp_path: Path) -> None:
    demo = f"{world.registry.demo_url}/demo/{world.diary}/"
    client = Client(demo, headers={"Authorization": f"Bearer {world.victim_token}"}, verbose=False,
                    download_files=str(tmp_path), httpx_kwargs={"timeout": 120})
    assert client.predict("Grace", "excited", api_name="/predict") == "Hello, Grace!!"
    assert httpx.get(f"{demo}config").status_code == 404  # without the token it is not there
    assert httpx.get(f"{demo}config", headers={"Authorization": "Bearer mh_wrong"}).status_code == 401
