"""Identity in a real browser: log in through the OpenID provider and see a private demo; open an
anonymous share link in a fresh browser and find no trace of the owner on the page."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Browser, expect

from conftest import RegistryServer
from modelhall.bundle import pack_bundle
from modelhall.templates import template_path
from oci_helpers import http, push_packed
from test_browser import OUTPUT_TIMEOUT_MS, browser, run  # noqa: F401 - browser is a fixture
from test_oidc import oidc_registry, organisation, provider, set_claims, stale_provider  # noqa: F401 - fixtures
from conftest import unique


def test_log_in_see_a_private_demo_then_review_it_anonymously(browser: Browser, oidc_registry: RegistryServer,  # noqa: F811
                                                               provider: str, organisation: str,  # noqa: F811
                                                               artifacts_dir: Path) -> None:
    oidc_registry.admin("create-org", organisation)
    owner, token = oidc_registry.user(name=unique("hidden-author"))
    oidc_registry.admin("add-member", organisation, owner, "--role", "owner")
    repository = f"{organisation}/paper-demo"
    client = http(oidc_registry.url, token)
    with pack_bundle(template_path("hello")) as packed:
        push_packed(client, repository, "latest", packed)
    client.post(f"/api/v1/repos/{repository}/predict", json={"inputs": {"name": "warm"}}, timeout=180)

    subject = unique("sub")
    set_claims(provider, subject, preferred_username="lab-colleague", groups=["ml-lab"])
    member = browser.new_context()
    page = member.new_page()
    page.goto(f"{oidc_registry.url}/auth/login/mock?next=/demo/{repository}/")
    page.locator("input[name=sub]").fill(subject)
    page.get_by_role("button", name="Authorize").click()
    expect(page.get_by_label("Your name")).to_be_visible(timeout=OUTPUT_TIMEOUT_MS)
    page.get_by_label("Your name").fill("Colleague")
    run(page)
    expect(page.get_by_label("Greeting")).to_have_value("Hello, Colleague.", timeout=OUTPUT_TIMEOUT_MS)
    page.screenshot(path=str(artifacts_dir / "identity-member-demo.png"), full_page=True)
    member.close()

    link = client.post(f"/api/v1/repos/{repository}/shares", json={"anonymous": True}).json()["url"]
    reviewer = browser.new_context()
    page = reviewer.new_page()
    page.goto(link)
    expect(page.get_by_label("Your name")).to_be_visible(timeout=OUTPUT_TIMEOUT_MS)
    page.get_by_label("Your name").fill("Reviewer 2")
    run(page)
    expect(page.get_by_label("Greeting")).to_have_value("Hello, Reviewer 2.", timeout=OUTPUT_TIMEOUT_MS)
    page.screenshot(path=str(artifacts_dir / "identity-anonymous-review.png"), full_page=True)
    html = page.content()
    assert owner not in html and organisation not in html and owner not in page.url
    reviewer.close()
