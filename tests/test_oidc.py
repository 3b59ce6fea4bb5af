"""Logging in through a real OpenID provider: ``oidc-provider-mock`` on loopback, the whole
authorization-code flow driven over HTTP as a browser would (redirects, form post, cookies)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import httpx
import oidc_provider_mock
import pytest
from joserfc.errors import JoseError

from conftest import RegistryServer, serve_registry, unique
from modelhall.bundle import pack_bundle
from modelhall.templates import template_path
from oci_helpers import http, push_packed

CLIENT_ID = "modelhall-test"


@pytest.fixture(scope="module")
def provider() -> Iterator[str]:
    with oidc_provider_mock.run_server_in_thread(port=0, require_nonce=True) as server:
        yield f"http://localhost:{server.server_port}"


@pytest.fixture(scope="module")
def stale_provider() -> Iterator[str]:
    """A provider whose ID tokens expired an hour before they were issued."""
    with oidc_provider_mock.run_server_in_thread(port=0, access_token_max_age=timedelta(hours=-1)) as server:
        yield f"http://localhost:{server.server_port}"


@pytest.fixture(scope="module")
def organisation() -> str:
    return unique("lab")


@pytest.fixture(scope="module")
def oidc_registry(database_kind: str, tmp_path_factory: pytest.TempPathFactory, provider: str,
                  stale_provider: str, organisation: str) -> Iterator[RegistryServer]:
    providers = [
        {"name": "mock", "discovery_url": f"{provider}/.well-known/openid-configuration", "client_id": CLIENT_ID,
         "client_secret": "s3cret", "organisations": {"ml-lab": organisation}},
        {"name": "stale", "discovery_url": f"{stale_provider}/.well-known/openid-configuration",
         "client_id": CLIENT_ID, "client_secret": "s3cret"},
    ]
    yield from serve_registry(database_kind, tmp_path_factory.mktemp("oidc") / "registry",
                              {"MODELHALL_OIDC_PROVIDERS": json.dumps(providers)})


def browser(registry: RegistryServer) -> httpx.Client:
    return httpx.Client(base_url=registry.url, follow_redirects=False, timeout=30)


def to_provider(client: httpx.Client, provider_name: str, next_path: str = "/api/v1/whoami") -> str:
    started = client.get(f"/auth/login/{provider_name}", params={"next": next_path})
    assert started.status_code == 302, started.text
    return started.headers["location"]


def approve(authorize_url: str, subject: str) -> str:
    """The user picks ``subject`` on the provider's page; returns where the provider sends the browser."""
    approved = httpx.post(authorize_url, data={"sub": subject}, follow_redirects=False)
    assert approved.status_code == 302, approved.text
    return approved.headers["location"]


def set_claims(provider: str, subject: str, **claims: object) -> None:
    httpx.put(f"{provider}/users/{subject}", json=claims).raise_for_status()


def log_in(registry: RegistryServer, provider: str, subject: str, **claims: object) -> httpx.Client:
    set_claims(provider, subject, **claims)
    client = browser(registry)
    callback = approve(to_provider(client, "mock"), subject)
    landed = client.get(callback)
    assert landed.status_code == 303, landed.text
    session_cookie = landed.headers["set-cookie"].lower()
    assert session_cookie.startswith("modelhall_session=") and "httponly" in session_cookie
    assert "samesite=lax" in session_cookie
    return client


def test_login_creates_the_user_and_groups_make_private_models_visible(oidc_registry: RegistryServer, provider: str,
                                                                        organisation: str) -> None:
    oidc_registry.admin("create-org", organisation)
    owner, owner_token = oidc_registry.user()
    oidc_registry.admin("add-member", organisation, owner, "--role", "owner")
    with pack_bundle(template_path("hello")) as packed:
        push_packed(http(oidc_registry.url, owner_token), f"{organisation}/secret", "latest", packed)
    subject = unique("sub")
    client = log_in(oidc_registry, provider, subject, preferred_username="Rita Levi", email="rita@lab.example",
                    groups=["ml-lab", "unrelated"])
    assert client.get("/api/v1/whoami").json()["name"] == "rita-levi"  # a namespace made from the username
    assert client.get(f"/api/v1/repos/{organisation}/secret").status_code == 200
    listed = client.get("/api/v1/repos", params={"namespace": organisation}).json()
    assert [repo["name"] for repo in listed] == [f"{organisation}/secret"]
    assert client.post(f"/api/v1/repos/{organisation}/secret/predict", json={"inputs": {"name": "R"}},
                       headers={"Origin": oidc_registry.url}, timeout=180).status_code == 200

    again = log_in(oidc_registry, provider, subject, preferred_username="Rita Levi", groups=[])
    assert again.get("/api/v1/whoami").json()["name"] == "rita-levi"  # the same user, found by issuer + subject
    assert again.get(f"/api/v1/repos/{organisation}/secret").status_code == 404  # the group is gone: so is access


def test_logout_ends_the_session_and_needs_a_same_site_request(oidc_registry: RegistryServer, provider: str) -> None:
    client = log_in(oidc_registry, provider, unique("sub"), preferred_username=unique("lee"))
    assert client.get("/api/v1/whoami").json()["name"] is not None
    forged = client.post("/auth/logout", headers={"Origin": "https://evil.example"})
    assert (forged.status_code, forged.json()["detail"]) == (
        403, "cross-site request refused: it did not come from this site")
    assert client.post("/auth/logout").status_code == 403  # no Origin or Referer at all: refused too
    assert client.post("/auth/logout", headers={"Origin": oidc_registry.url}).status_code == 200
    assert client.get("/api/v1/whoami").json()["name"] is None


def test_a_tampered_state_is_refused(oidc_registry: RegistryServer, provider: str) -> None:
    subject = unique("sub")
    set_claims(provider, subject, preferred_username=subject)
    client = browser(oidc_registry)
    callback = approve(to_provider(client, "mock"), subject)
    parts = urlsplit(callback)
    query = parse_qs(parts.query)
    refused = client.get(parts.path, params={"code": query["code"][0], "state": query["state"][0] + "x"})
    assert refused.status_code == 400 and "state" in refused.json()["detail"].lower()
    assert client.get("/api/v1/whoami").json()["name"] is None


def test_a_replayed_code_is_refused(oidc_registry: RegistryServer, provider: str) -> None:
    subject = unique("sub")
    set_claims(provider, subject, preferred_username=subject)
    first = browser(oidc_registry)
    callback = approve(to_provider(first, "mock"), subject)
    assert first.get(callback).status_code == 303
    replay = browser(oidc_registry)  # a fresh login, so the state matches, presenting the used code
    fresh_state = parse_qs(urlsplit(to_provider(replay, "mock")).query)["state"][0]
    used_code = parse_qs(urlsplit(callback).query)["code"][0]
    refused = replay.get(urlsplit(callback).path, params={"code": used_code, "state": fresh_state})
    assert refused.status_code == 400, refused.text
    assert refused.json()["detail"].startswith("login failed:")
    assert replay.get("/api/v1/whoami").json()["name"] is None


def test_an_expired_id_token_is_refused(oidc_registry: RegistryServer, stale_provider: str) -> None:
    subject = unique("sub")
    set_claims(stale_provider, subject, preferred_username=subject)
    client = browser(oidc_registry)
    callback = approve(to_provider(client, "stale"), subject)
    refused = client.get(callback)
    assert refused.status_code == 400 and "expired" in refused.json()["detail"]
    assert client.get("/api/v1/whoami").json()["name"] is None


def test_an_id_token_for_another_audience_is_refused(oidc_registry: RegistryServer, provider: str) -> None:
    """The provider issues a token to another client; the registry's verifier (its configured
    Authlib client, as the callback uses it) must not accept it."""
    import asyncio

    from modelhall.registry.auth.oidc import make_oauth
    from modelhall.settings import load_settings

    subject = unique("sub")
    set_claims(provider, subject, preferred_username=subject)
    metadata = httpx.get(f"{provider}/.well-known/openid-configuration").json()
    redirect = "http://127.0.0.1/elsewhere"
    authorize = httpx.Request("GET", metadata["authorization_endpoint"], params={
        "client_id": "another-app", "response_type": "code", "scope": "openid", "redirect_uri": redirect,
        "nonce": "n-1", "state": "s-1"}).url
    code = parse_qs(urlsplit(approve(str(authorize), subject)).query)["code"][0]
    token = httpx.post(metadata["token_endpoint"], data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": redirect, "client_id": "another-app",
        "client_secret": "x"}).json()
    settings = load_settings(oidc_providers=[{"name": "mock", "client_id": CLIENT_ID,
                                              "discovery_url": f"{provider}/.well-known/openid-configuration"}])
    client = make_oauth(settings).create_client("mock")

    async def verify() -> object:
        return await client.parse_id_token(token, nonce="n-1")

    with pytest.raises(JoseError, match="'(aud|azp)'"):  # the audience is not us (checked with azp first)
        asyncio.run(verify())


def test_login_redirects_only_within_the_site(oidc_registry: RegistryServer, provider: str) -> None:
    subject = unique("sub")
    set_claims(provider, subject, preferred_username=subject)
    client = browser(oidc_registry)
    callback = approve(to_provider(client, "mock", next_path="https://evil.example/"), subject)
    assert client.get(callback).headers["location"] == "/"
    assert client.get("/auth/login/nobody").status_code == 404
