"""The Streamlit gallery against a live registry: page logic with Streamlit's AppTest, and the
real thing in headless Chromium (screenshots in test-artifacts/)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect
from streamlit.testing.v1 import AppTest

from conftest import RegistryServer, free_port, serve_registry, unique
from modelhall.bundle import pack_bundle
from modelhall.cli.gallery import gallery_command
from modelhall.showcase import gallery
from modelhall.showcase.gallery import browse, charts, model_page
from modelhall.showcase.gallery.snippets import snippets
from modelhall.spec import load_spec_file
from modelhall.templates import template_path
from oci_helpers import http, push_packed
from test_browser import OUTPUT_TIMEOUT_MS, browser, run  # noqa: F401 - browser is a fixture

APP = Path(gallery.__file__).resolve().parent / "app.py"
APP_TIMEOUT_SECONDS = 60
PAGE_TIMEOUT_MS = 60_000


@dataclass
class Seeded:
    registry: RegistryServer
    gallery_url: str
    owner: str
    token: str
    public: list[str]
    private: str


@pytest.fixture(scope="module")
def seeded(database_kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    data = tmp_path_factory.mktemp("gallery")
    gallery_port = free_port()
    gallery_url = f"http://127.0.0.1:{gallery_port}"
    for registry in serve_registry(database_kind, data / "registry", {"MODELHALL_GALLERY_URL": gallery_url}):
        owner, token = registry.user("admin", name=unique("author"))
        client = http(registry.url, token)
        public = []
        for template in ("hello", "image-classification"):
            name = f"{owner}/{template}"
            with pack_bundle(template_path(template)) as packed:
                push_packed(client, name, "latest", packed)
            client.patch(f"/api/v1/repos/{name}", json={"visibility": "public"}).raise_for_status()
            public.append(name)
        private = f"{owner}/{unique('secret-project')}"
        with pack_bundle(template_path("hello")) as packed:
            push_packed(client, private, "latest", packed)
        with (data / "gallery.log").open("ab") as log:
            process = subprocess.Popen(gallery_command(gallery_port), stdout=log, stderr=subprocess.STDOUT,
                                       env={**registry.env, "MODELHALL_GALLERY_URL": gallery_url})
        try:
            _wait_for(f"{gallery_url}/_stcore/health")
            yield Seeded(registry, gallery_url, owner, token, public, private)
        finally:
            process.terminate()
            process.wait(timeout=15)


def _wait_for(url: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer within {seconds} s")


def app(seeded: Seeded, monkeypatch: pytest.MonkeyPatch, **query: str) -> AppTest:
    monkeypatch.setenv("MODELHALL_URL", seeded.registry.url)
    monkeypatch.setenv("MODELHALL_GALLERY_URL", seeded.gallery_url)
    test = AppTest.from_file(str(APP), default_timeout=APP_TIMEOUT_SECONDS)
    for key, value in query.items():
        test.query_params[key] = value
    return test


def shown(test: AppTest) -> str:
    return "\n".join(element.value for element in [*test.markdown, *test.html, *test.caption, *test.title] if element.value)


# --- page logic (AppTest) ---------------------------------------------------------------


def test_browse_lists_public_models_only(seeded: Seeded, monkeypatch: pytest.MonkeyPatch) -> None:
    test = app(seeded, monkeypatch).run()
    assert not test.exception
    text = shown(test)
    assert all(name in text for name in seeded.public) and seeded.private not in text


def test_search_narrows_the_cards(seeded: Seeded, monkeypatch: pytest.MonkeyPatch) -> None:
    test = app(seeded, monkeypatch).run()
    test.sidebar.text_input(key="q").set_value("handwritten digit").run()
    text = shown(test)
    assert f"{seeded.owner}/image-classification" in text and f"{seeded.owner}/hello" not in text
    test.sidebar.text_input(key="q").set_value("no such words anywhere").run()
    assert [info.value for info in test.info] == ["No model matches these filters. Try fewer words or another filter."]


def test_a_filter_by_output_type(seeded: Seeded, monkeypatch: pytest.MonkeyPatch) -> None:
    test = app(seeded, monkeypatch).run()
    test.sidebar.selectbox(key="filter-output_type").set_value("label").run()
    text = shown(test)
    assert f"{seeded.owner}/image-classification" in text and f"{seeded.owner}/hello" not in text


def test_the_owner_sees_private_models_and_the_author_tools(seeded: Seeded, monkeypatch: pytest.MonkeyPatch) -> None:
    test = app(seeded, monkeypatch, mine="1")
    test.session_state["token"] = seeded.token
    test.run()
    assert seeded.private in shown(test) and f"Logged in as **{seeded.owner}**" in shown(test)
    page = app(seeded, monkeypatch, model=seeded.private)
    page.session_state["token"] = seeded.token
    page.run()
    assert not page.exception
    assert [header.value for header in page.subheader] == ["Who can see it", "Share links", "Versions"]
    signature = page.dataframe[0].value
    assert list(signature["name"]) == ["name", "style", "greeting"]


def test_a_model_page_for_the_public(seeded: Seeded, monkeypatch: pytest.MonkeyPatch) -> None:
    test = app(seeded, monkeypatch, model=f"{seeded.owner}/image-classification").run()
    assert not test.exception
    code = "\n".join(block.value for block in test.code)
    assert f"{seeded.registry.url}/api/v1/repos/{seeded.owner}/image-classification/predict" in code
    assert "Client(" in code and "api_name='/predict'" in code
    assert f"Client('{seeded.registry.demo_url}/demo/{seeded.owner}/image-classification/')" in code
    [demo] = test.get("iframe")  # the demo, from its own origin
    assert demo.proto.src.startswith(f"{seeded.registry.demo_url}/live/")
    assert any("run history is for the model's members" in info.value for info in test.info)
    assert any("Only the model's maintainers" in info.value for info in test.info)


def test_a_model_page_says_what_the_spec_and_card_say_once(seeded: Seeded, monkeypatch: pytest.MonkeyPatch) -> None:
    test = app(seeded, monkeypatch, model=f"{seeded.owner}/image-classification").run()
    assert not test.exception
    badges = next(element.value for element in test.markdown if ":blue-badge[" in element.value)
    assert badges.lower().count("license:") == 1  # the spec's BSD-3-Clause and the card's bsd-3-clause
    assert ":blue-badge[dataset: sklearn-digits]" in badges and badges.count("tag: starter") == 1
    [signature] = [frame.value for frame in test.dataframe if "constraints" in frame.value]
    assert list(signature["constraints"])[0] == ".png .jpg .jpeg .bmp .webp; up to 5 MB"
    hello = app(seeded, monkeypatch, model=f"{seeded.owner}/hello").run()
    [signature] = [frame.value for frame in hello.dataframe if "constraints" in frame.value]
    assert list(signature["constraints"])[:2] == ["at most 100 characters; default world",
                                                  "one of plain, excited; default plain"]
    assert [info.value for info in hello.info][0].startswith("Asleep: the model wakes when the demo opens")


def test_the_deployment_banner_says_each_state() -> None:
    say = model_page.deployment_message
    assert say({"state": "sleeping"})[0] == "info"
    assert say({"state": "starting"}) == ("info", "Starting… the demo appears once the model has loaded.")
    assert say({"state": "running", "workers": [{"state": "ready"}, {"state": "stopped"}]}) == (
        "success", "Running (1 worker).")
    assert say({"state": "failed", "detail": "ImportError: torch"}) == (
        "error", "The model failed to start: ImportError: torch")
    assert say({"state": "unschedulable", "detail": "no GPU is free"}) == (
        "warning", "The model cannot be started here now: no GPU is free")


def test_tiles_of_models_of_one_task_tell_them_apart_and_quote_no_markup() -> None:
    first, second = browse.task_tile("text-generation", "alice/poet"), browse.task_tile("text-generation", "bob/scribe")
    assert first != second and ">P<" in first and "poet" in first and ">S<" in second and "scribe" in second
    assert "text generation" in first and browse.task_tile(None, "carol/hello").count("no task") == 1
    hostile = browse.task_tile("image-classification", "mallory/<img src=x onerror=alert(1)>")
    assert "<img" not in hostile and "&lt;img" in hostile


def test_what_may_not_be_seen_reads_as_not_there(seeded: Seeded, monkeypatch: pytest.MonkeyPatch) -> None:
    test = app(seeded, monkeypatch, model=seeded.private).run()
    assert not test.exception and seeded.private in test.warning[0].value  # the name asked for, nothing more
    assert "or you may not see it" in test.warning[0].value


def test_an_unreachable_registry_is_a_message_not_a_traceback(seeded: Seeded,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    test = app(seeded, monkeypatch)
    monkeypatch.setenv("MODELHALL_URL", f"http://127.0.0.1:{free_port()}")
    test.run()
    assert not test.exception
    assert test.error[0].value.startswith("The registry cannot be reached right now.")


# --- in the browser ----------------------------------------------------------------------


def open_gallery(page: Page, url: str) -> None:
    page.goto(url)
    expect(page.get_by_text(re.compile(r"\d+–\d+ of \d+ models"))).to_be_visible(timeout=PAGE_TIMEOUT_MS)


def test_browse_in_the_browser_as_anonymous(browser: Browser, seeded: Seeded, artifacts_dir: Path) -> None:  # noqa: F811
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    open_gallery(page, seeded.gallery_url)
    for name in seeded.public:
        expect(page.get_by_role("link", name=name)).to_be_visible(timeout=PAGE_TIMEOUT_MS)
    expect(page.locator("img[src$='/thumbnail']")).to_have_count(1, timeout=PAGE_TIMEOUT_MS)  # the digit example
    page.screenshot(path=str(artifacts_dir / "gallery-browse-anonymous.png"), full_page=True)
    assert seeded.private not in page.content()
    page.get_by_label("Search").fill("handwritten")
    page.get_by_label("Search").press("Enter")
    expect(page.get_by_role("link", name=f"{seeded.owner}/hello")).to_have_count(0, timeout=PAGE_TIMEOUT_MS)
    expect(page.get_by_role("link", name=f"{seeded.owner}/image-classification")).to_be_visible()
    page.close()


def test_the_owner_logs_in_with_a_token_and_sees_everything(browser: Browser, seeded: Seeded,  # noqa: F811
                                                            artifacts_dir: Path) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    open_gallery(page, seeded.gallery_url)
    page.get_by_text("Log in with an access token").click()
    page.get_by_label("Access token").fill(seeded.token)
    page.get_by_role("button", name="Use token").click()
    expect(page.get_by_text(f"Logged in as {seeded.owner}")).to_be_visible(timeout=PAGE_TIMEOUT_MS)
    expect(page.get_by_role("link", name=seeded.private)).to_be_visible(timeout=PAGE_TIMEOUT_MS)
    page.screenshot(path=str(artifacts_dir / "gallery-browse-owner.png"), full_page=True)
    page.close()


def test_the_sidebar_navigates_in_the_same_tab_and_session(browser: Browser, seeded: Seeded) -> None:  # noqa: F811
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    open_gallery(page, seeded.gallery_url)
    expect(page.get_by_text("No login provider is configured on this registry")).to_be_visible()
    page.get_by_text("Log in with an access token").click()
    page.get_by_label("Access token").fill(seeded.token)
    page.get_by_role("button", name="Use token").click()
    expect(page.get_by_text(f"Logged in as {seeded.owner}")).to_be_visible(timeout=PAGE_TIMEOUT_MS)
    page.get_by_role("button", name="My models").click()
    expect(page.get_by_role("heading", name="My models")).to_be_visible(timeout=PAGE_TIMEOUT_MS)
    expect(page.get_by_role("link", name=seeded.private)).to_be_visible(timeout=PAGE_TIMEOUT_MS)
    assert page.url.endswith("?mine=1")
    page.get_by_role("button", name="All models").click()
    expect(page.get_by_role("heading", name="Models", exact=True)).to_be_visible(timeout=PAGE_TIMEOUT_MS)
    expect(page.get_by_text(f"Logged in as {seeded.owner}")).to_be_visible()  # the pasted token is kept
    assert len(context.pages) == 1 and "mine" not in page.url
    context.close()


def test_an_anonymous_share_link_opens_the_model_and_its_demo(browser: Browser, seeded: Seeded,  # noqa: F811
                                                              artifacts_dir: Path) -> None:
    owner = http(seeded.registry.url, seeded.token)
    link = owner.post(f"/api/v1/repos/{seeded.private}/shares", json={"anonymous": True}).json()["url"]
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.goto(link)  # the registry remembers the link, then sends the browser to the gallery
    expect(page.get_by_text("shared anonymously for review")).to_be_visible(timeout=PAGE_TIMEOUT_MS)
    demo = page.frame_locator("iframe").first
    demo.get_by_label("Your name").fill("Reviewer 3")
    demo.get_by_role("button", name="Run").click()
    expect(demo.get_by_label("Greeting")).to_have_value("Hello, Reviewer 3.", timeout=OUTPUT_TIMEOUT_MS)
    page.screenshot(path=str(artifacts_dir / "gallery-share-link-anonymous.png"), full_page=True)
    html = page.content() + "".join(frame.content() for frame in page.frames)
    assert seeded.owner not in html and seeded.private not in html
    context.close()


def test_the_gallery_needs_no_database(seeded: Seeded) -> None:
    """It reads the registry's REST API only: nothing in its code opens the database."""
    sources = "\n".join(path.read_text() for path in APP.parent.glob("*.py"))
    assert "sqlalchemy" not in sources and "modelhall.registry" not in sources


# --- page parts, without a registry ------------------------------------------------------


def fake_runs(count: int) -> list[dict]:
    start = datetime(2026, 12, 1, tzinfo=UTC)
    return [{"created_at": (start + timedelta(minutes=7 * i)).isoformat(), "status": "succeeded", "source": "api",
             "duration_ms": 5.0 + (i % 97), "cold": i % 50 == 0} for i in range(count)]


@pytest.mark.parametrize("count", [1, 10, 10_000])
def test_charts_stay_legible_with_1_10_and_10000_runs(count: int) -> None:
    frame = charts.runs_frame(fake_runs(count))
    per_day, latency, starts = (chart.to_dict() for chart in (charts.runs_per_day(frame),
                                                              charts.latency_histogram(frame),
                                                              charts.cold_versus_warm(frame)))
    rows = {name: len(next(iter(spec["datasets"].values()))) for name, spec in
            (("per day", per_day), ("latency", latency), ("starts", starts))}
    assert rows["per day"] == frame["day"].nunique() and rows["starts"] == 2  # summaries, never a row per run
    assert rows["latency"] == (count if count <= charts.FEW_RUNS else charts.LATENCY_BINS)
    assert latency["mark"]["type"] == ("tick" if count <= charts.FEW_RUNS else "bar")  # one run: a mark, not a wall
    assert starts["layer"][0]["encoding"]["x"]["scale"]["domain"] == ["cold", "warm"]  # both, even with one run
    assert all(spec["width"] == "container" for spec in (per_day, latency, starts))  # titles are not clipped


class _Recorder(BaseHTTPRequestHandler):
    """A predict endpoint that keeps what it was sent and answers as the registry does."""

    received: list[tuple[dict[str, str], bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 - the standard library's name
        self.received.append((dict(self.headers), self.rfile.read(int(self.headers["Content-Length"]))))
        body = b'{"outputs": {"label": "7"}}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_the_api_snippets_run_as_pasted(tmp_path: Path) -> None:
    """curl (with base64 -w0) and Python (with open(…, 'rb')) send the example's file from the folder they
    run in, as the predict API takes it."""
    spec = load_spec_file(template_path("image-classification")).to_json_dict()
    digit = template_path("image-classification") / "examples" / "digit-0.png"
    shutil.copyfile(digit, tmp_path / "digit-0.png")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/api/v1/repos/a/digits/predict"
        code = snippets(url, "http://127.0.0.1:1/", spec, "token")
        env = {**os.environ, "MODELHALL_TOKEN": "mh_example"}
        subprocess.run(["bash", "-euc", code["curl"]], cwd=tmp_path, env=env, check=True, capture_output=True)
        printed = subprocess.run([sys.executable, "-c", code["Python"]], cwd=tmp_path, env=env, check=True,
                                 capture_output=True, text=True).stdout
    finally:
        server.shutdown()
    assert printed.strip() == "{'label': '7'}"
    expected = {"inputs": {"image": {"name": "digit-0.png", "data": base64.b64encode(digit.read_bytes()).decode()}}}
    assert [json.loads(body) for _, body in _Recorder.received[-2:]] == [expected, expected]
    assert all(headers["Authorization"] == "Bearer mh_example" for headers, _ in _Recorder.received[-2:])
    assert "<base64" not in "".join(code.values()) and "handle_file('digit-0.png')" in code["gradio_client"]
