"""Generated demos in a real browser: headless Debian Chromium driven by Playwright.

Each starter template is served, its page opened, an input given, Run clicked and the
output awaited; a screenshot per template lands in test-artifacts/.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from conftest import ModelServer, require_tool, serve_bundle, serve_registry
from modelhall.bundle import pack_bundle
from modelhall.templates import template_path
from oci_helpers import http, push_packed

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
OUTPUT_TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chromium = require_tool("chromium", "apt-get install chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    yield page
    context.close()


def served(name: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServer]:
    yield from serve_bundle(template_path(name), tmp_path_factory.mktemp(f"logs-{name}"))


@pytest.fixture(scope="module")
def hello(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServer]:
    yield from served("hello", tmp_path_factory)


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServer]:
    yield from served("image-classification", tmp_path_factory)


@pytest.fixture(scope="module")
def winter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServer]:
    yield from served("image-to-image", tmp_path_factory)


@pytest.fixture(scope="module")
def chat(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServer]:
    yield from served("text-generation", tmp_path_factory)


def run(page: Page) -> None:
    page.get_by_role("button", name="Run").click()


def test_hello_demo_greets(page: Page, hello: ModelServer, artifacts_dir: Path) -> None:
    page.goto(hello.url)
    expect(page.get_by_text("Greets whoever you name")).to_be_visible()
    page.get_by_label("Your name").fill("Grace")
    page.get_by_label("excited").check()
    run(page)
    expect(page.get_by_label("Greeting")).to_have_value("Hello, Grace!!", timeout=OUTPUT_TIMEOUT_MS)
    page.screenshot(path=str(artifacts_dir / "demo-hello.png"), full_page=True)


def test_digit_demo_reads_an_uploaded_digit(page: Page, digits: ModelServer, artifacts_dir: Path) -> None:
    page.goto(digits.url)
    page.locator("input[type=file]").first.set_input_files(str(template_path("image-classification") /
                                                               "examples" / "digit-3.png"))
    run(page)
    expect(page.locator("[data-testid=label-output-value]").first).to_contain_text("3", timeout=OUTPUT_TIMEOUT_MS)
    page.screenshot(path=str(artifacts_dir / "demo-image-classification.png"), full_page=True)


def test_winterize_demo_shows_the_result_image(page: Page, winter: ModelServer, artifacts_dir: Path) -> None:
    page.goto(winter.url)
    page.locator("input[type=file]").first.set_input_files(str(template_path("image-to-image") / "examples" /
                                                               "beach.png"))
    run(page)
    download = page.get_by_role("link", name="Download")  # the output image, once there is one
    expect(download).to_have_attribute("href", re.compile(r"/gradio_api/file=.*\.png$"), timeout=OUTPUT_TIMEOUT_MS)
    page.screenshot(path=str(artifacts_dir / "demo-image-to-image.png"), full_page=True)


def test_chat_demo_answers(page: Page, chat: ModelServer, artifacts_dir: Path) -> None:
    page.goto(chat.url)
    page.get_by_label("Prompt").fill("What is the capital of France?")
    run(page)
    expect(page.get_by_label("Generated text")).to_have_value(re.compile("Paris"), timeout=OUTPUT_TIMEOUT_MS)
    page.screenshot(path=str(artifacts_dir / "demo-text-generation.png"), full_page=True)


def text_model(tmp_path_factory: pytest.TempPathFactory, name: str, text_input: str, body: str) -> Path:
    """A bundle of one text input and one text output whose ``predict`` is the one line ``body``."""
    bundle = tmp_path_factory.mktemp(name) / name
    bundle.mkdir()
    (bundle / "modelhall.yaml").write_text(f"name: {name}\nruntime: {{adapter: python, entrypoint: predict.py:predict}}\n"
                                           f"inputs: [{{name: {text_input}, type: text}}]\n"
                                           "outputs: [{name: out, type: text}]\n")
    (bundle / "predict.py").write_text(f"def predict({text_input}):\n    {body}\n")
    return bundle


def test_a_failing_model_shows_an_error_in_the_page(page: Page, tmp_path_factory: pytest.TempPathFactory) -> None:
    bundle = text_model(tmp_path_factory, "failing", "text", "raise ValueError(f'cannot handle {text}')")
    for server in serve_bundle(bundle, bundle.parent):
        page.goto(server.url)
        page.get_by_label("Text").fill("this")
        run(page)
        expect(page.locator("#run-problem")).to_have_text("The model failed: ValueError: cannot handle this",
                                                          timeout=OUTPUT_TIMEOUT_MS)


def test_an_input_error_stays_beside_the_form_until_the_next_run(page: Page,
                                                                  tmp_path_factory: pytest.TempPathFactory) -> None:
    """An empty prompt: a message under the Run button (not only a toast) that stays when the toast is closed
    and goes with the next run; the server's log has one line for it, no traceback."""
    bundle = text_model(tmp_path_factory, "strict", "prompt", "return prompt.upper()")
    for server in serve_bundle(bundle, bundle.parent):
        page.goto(server.url)
        run(page)
        problem = page.locator("#run-problem")
        expect(problem).to_have_text("Check the input: prompt: is required", timeout=OUTPUT_TIMEOUT_MS)
        for close in page.locator(".toast-close").all():
            close.click()
        expect(page.locator(".toast-body")).to_have_count(0)
        expect(problem).to_be_visible()
        page.get_by_label("Prompt").fill("now")
        run(page)
        expect(page.get_by_label("Out")).to_have_value("NOW", timeout=OUTPUT_TIMEOUT_MS)
        expect(problem).to_be_hidden()
        log = server.log.read_text()
        assert log.count("prompt: is required") == 1 and "Traceback" not in log


def test_a_sleeping_demo_through_the_gateway_wakes_in_the_browser(page: Page, tmp_path: Path) -> None:
    """The registry's /demo/… sends the browser to the demo origin, whose page says the model is
    starting, reloads itself, then is the working demo."""
    for registry in serve_registry("sqlite", tmp_path / "registry"):
        user, token = registry.user()
        client = http(registry.url, token)
        with pack_bundle(template_path("hello")) as packed:
            push_packed(client, f"{user}/hello", "latest", packed)
        client.patch(f"/api/v1/repos/{user}/hello", json={"visibility": "public"}).raise_for_status()
        page.goto(f"{registry.url}/demo/{user}/hello/")
        expect(page.get_by_role("heading", name=f"Starting {user}/hello…")).to_be_visible()
        assert page.url.startswith(f"{registry.demo_url}/live/")
        page.get_by_label("Your name").fill("Gateway", timeout=OUTPUT_TIMEOUT_MS)
        run(page)
        expect(page.get_by_label("Greeting")).to_have_value("Hello, Gateway.", timeout=OUTPUT_TIMEOUT_MS)


def test_an_image_made_behind_the_gateway_loads_in_the_page(page: Page, tmp_path: Path, artifacts_dir: Path) -> None:
    for registry in serve_registry("sqlite", tmp_path / "registry"):
        user, token = registry.user()
        client = http(registry.url, token)
        with pack_bundle(template_path("image-to-image")) as packed:
            push_packed(client, f"{user}/winter", "latest", packed)
        client.patch(f"/api/v1/repos/{user}/winter", json={"visibility": "public"}).raise_for_status()
        client.post(f"/api/v1/repos/{user}/winter/predict", json={"inputs": {}})  # wakes it (then refuses: no photo)
        page.goto(f"{registry.url}/demo/{user}/winter/")
        page.locator("input[type=file]").first.set_input_files(str(template_path("image-to-image") / "examples" /
                                                                   "beach.png"))
        run(page)
        download = page.get_by_role("link", name="Download")
        expect(download).to_have_attribute("href", re.compile(r"/live/\d+@sha256:[0-9a-f]{64}/"),
                                           timeout=OUTPUT_TIMEOUT_MS)
        assert page.url.startswith(f"{registry.demo_url}/live/")
        loaded = page.locator("img[src*='/live/'][src$='.png']").last
        expect(loaded).to_have_js_property("naturalWidth", 256, timeout=OUTPUT_TIMEOUT_MS)
        page.screenshot(path=str(artifacts_dir / "gateway-image-to-image.png"), full_page=True)
