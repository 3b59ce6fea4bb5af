"""Who sees and does what: anonymous, tokens, wrong tokens, scopes, organisations, the token flow."""

from __future__ import annotations

import base64
import re
import subprocess
import time
from datetime import timedelta

import httpx
import jwt
import pytest
from sqlalchemy import select

from conftest import MODELHALL, RegistryServer
from modelhall.registry.auth.login_links import create_login_link
from modelhall.registry.auth.tokens import hash_token
from modelhall.registry.db.models import LoginLink, User
from modelhall.registry.db.session import make_session_factory
from oci_helpers import error_code, http, push_image


@pytest.fixture
def owner(registry: RegistryServer) -> tuple[str, str]:
    return registry.user()


@pytest.fixture
def repos(registry: RegistryServer, owner: tuple[str, str]) -> dict[str, str]:
    """A public and a private repository of ``owner``, each with tag v1."""
    user, token = owner
    client = http(registry.url, token)
    for name in ("public", "private"):
        push_image(client, f"{user}/{name}", "v1")
    client.patch(f"/api/v1/repos/{user}/public", json={"visibility": "public"}).raise_for_status()
    return {"public": f"{user}/public", "private": f"{user}/private"}


def test_new_repositories_are_private(registry: RegistryServer, owner: tuple[str, str]) -> None:
    user, token = owner
    push_image(http(registry.url, token), f"{user}/fresh", "v1")
    assert http(registry.url, token).get(f"/api/v1/repos/{user}/fresh").json()["visibility"] == "private"
    assert httpx.get(f"{registry.url}/api/v1/repos/{user}/fresh").status_code == 404


def test_anonymous_reads_public_only(registry: RegistryServer, repos: dict[str, str]) -> None:
    anonymous = http(registry.url)
    assert anonymous.get(f"/v2/{repos['public']}/manifests/v1").status_code == 200
    assert anonymous.get(f"/api/v1/repos/{repos['public']}").json()["visibility"] == "public"
    challenged = anonymous.get(f"/v2/{repos['private']}/manifests/v1")
    assert challenged.status_code == 401  # the same as for a repository that does not exist:
    assert anonymous.get("/v2/nobody/nothing/manifests/v1").status_code == 401
    assert challenged.headers["www-authenticate"].endswith(f'scope="repository:{repos["private"]}:pull"')
    assert anonymous.get(f"/api/v1/repos/{repos['private']}").status_code == 404
    listed = {r["name"] for r in anonymous.get("/api/v1/repos", params={"limit": 200}).json()}
    assert repos["public"] in listed and repos["private"] not in listed


def test_owner_token_reads_and_writes(registry: RegistryServer, owner: tuple[str, str],
                                      repos: dict[str, str]) -> None:
    client = http(registry.url, owner[1])
    assert client.get(f"/v2/{repos['private']}/manifests/v1").status_code == 200
    assert client.get(f"/api/v1/repos/{repos['private']}/versions").json()[0]["tag"] == "v1"
    push_image(client, repos["private"], "v2")


def test_other_users_get_404_for_what_they_may_not_see_and_403_for_writes(registry: RegistryServer,
                                                          repos: dict[str, str]) -> None:
    _, token = registry.user()
    stranger = http(registry.url, token)
    hidden = stranger.get(f"/v2/{repos['private']}/manifests/v1")
    assert (hidden.status_code, error_code(hidden)) == (404, "NAME_UNKNOWN")
    assert stranger.get(f"/v2/{repos['private']}/tags/list").status_code == 404
    assert stranger.delete(f"/v2/{repos['private']}/manifests/v1").status_code == 404
    assert stranger.get(f"/api/v1/repos/{repos['private']}").status_code == 404
    assert stranger.patch(f"/api/v1/repos/{repos['private']}", json={"visibility": "public"}).status_code == 404
    assert stranger.get(f"/v2/{repos['public']}/manifests/v1").status_code == 200
    denied = stranger.post(f"/v2/{repos['public']}/blobs/uploads/")  # one they may see
    assert (denied.status_code, error_code(denied)) == (403, "DENIED")
    for name in (repos["private"], "nobody-here/new"):  # the same answer, whether it exists or not
        unseen = stranger.post(f"/v2/{name}/blobs/uploads/")
        assert (unseen.status_code, error_code(unseen)) == (404, "NAME_UNKNOWN"), name
    assert stranger.patch(f"/api/v1/repos/{repos['public']}", json={"visibility": "private"}).status_code == 403


def test_wrong_token_is_refused_everywhere(registry: RegistryServer, owner: tuple[str, str],
                                           repos: dict[str, str]) -> None:
    wrong = http(registry.url, "mh_not-a-real-token")
    response = wrong.get(f"/v2/{repos['public']}/manifests/v1")
    assert (response.status_code, error_code(response)) == (401, "UNAUTHORIZED")
    assert wrong.get(f"/api/v1/repos/{repos['public']}").status_code == 401
    assert wrong.get("/api/v1/whoami").json() == {"detail": "unknown or revoked token"}
    other_user = httpx.get(f"{registry.url}/api/v1/whoami", auth=("somebody-else", owner[1]))
    assert other_user.status_code == 401


def test_read_token_cannot_push(registry: RegistryServer, owner: tuple[str, str], repos: dict[str, str]) -> None:
    user, _ = owner
    reader_token = registry.admin("create-token", user, "--scope", "read")
    reader = http(registry.url, reader_token)
    assert reader.get(f"/v2/{repos['private']}/manifests/v1").status_code == 200
    denied = reader.post(f"/v2/{repos['private']}/blobs/uploads/")
    assert (denied.status_code, error_code(denied)) == (403, "DENIED")
    assert reader.get("/api/v1/whoami").json() == {"name": user, "scopes": ["read"]}


def test_bearer_access_token_works_like_basic(registry: RegistryServer, owner: tuple[str, str],
                                              repos: dict[str, str]) -> None:
    headers = {"Authorization": f"Bearer {owner[1]}"}
    assert httpx.get(f"{registry.url}/v2/{repos['private']}/tags/list", headers=headers).json()["tags"] == ["v1"]


def test_docker_token_flow(registry: RegistryServer, owner: tuple[str, str], repos: dict[str, str]) -> None:
    user, token = owner
    scope = f"repository:{repos['private']}:pull,push"
    issued = httpx.get(f"{registry.url}/token", params={"service": "modelhall", "scope": scope}, auth=(user, token))
    body = issued.json()
    assert body["token"] == body["access_token"] and 0 < body["expires_in"] <= 3600
    claims = jwt.decode(body["token"], options={"verify_signature": False})
    assert claims["sub"] == user
    assert claims["access"] == [{"type": "repository", "name": repos["private"], "actions": ["delete", "pull", "push"]}]
    bearer = {"Authorization": f"Bearer {body['token']}"}
    assert httpx.get(f"{registry.url}/v2/{repos['private']}/tags/list", headers=bearer).status_code == 200
    other = httpx.get(f"{registry.url}/v2/{repos['public']}/tags/list", headers=bearer)
    assert other.status_code == 401  # the token names one repository; ask for another
    assert 'error="insufficient_scope"' in other.headers["www-authenticate"]


def test_anonymous_token_grants_only_public_pulls(registry: RegistryServer, repos: dict[str, str]) -> None:
    scopes = f"repository:{repos['public']}:pull repository:{repos['private']}:pull"
    token = httpx.get(f"{registry.url}/token", params={"scope": scopes}).json()["token"]
    access = {entry["name"]: entry["actions"] for entry in jwt.decode(token, options={"verify_signature": False})["access"]}
    assert access == {repos["public"]: ["pull"], repos["private"]: []}
    bearer = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{registry.url}/v2/{repos['public']}/tags/list", headers=bearer).status_code == 200
    assert httpx.get(f"{registry.url}/v2/{repos['private']}/tags/list", headers=bearer).status_code == 404


def test_token_endpoint_refuses_wrong_credentials(registry: RegistryServer, owner: tuple[str, str]) -> None:
    response = httpx.get(f"{registry.url}/token", auth=(owner[0], "mh_wrong"))
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Basic realm="modelhall"'


def test_forged_and_expired_registry_tokens_are_refused(registry: RegistryServer, repos: dict[str, str]) -> None:
    claims = {"iss": "modelhall", "aud": "modelhall", "sub": "", "exp": int(time.time()) + 60,
              "access": [{"type": "repository", "name": repos["private"], "actions": ["pull"]}]}
    forged = jwt.encode(claims, "a guess at the key that is long enough to sign", algorithm="HS256")
    response = httpx.get(f"{registry.url}/v2/{repos['private']}/tags/list", headers={"Authorization": f"Bearer {forged}"})
    assert (response.status_code, response.json()["errors"][0]["detail"]) == (401, "the registry token is not valid")
    key = (registry.data_dir / "secret.key").read_text().strip()
    expired = jwt.encode({**claims, "exp": int(time.time()) - 10}, key, algorithm="HS256")
    response = httpx.get(f"{registry.url}/v2/{repos['private']}/tags/list", headers={"Authorization": f"Bearer {expired}"})
    assert response.json()["errors"][0]["detail"] == "the registry token has expired"


def test_organisation_members_push_to_its_namespace(registry: RegistryServer) -> None:
    member, member_token = registry.user()
    outsider, outsider_token = registry.user()
    organisation = f"lab{member[1:]}"
    registry.admin("create-org", organisation)
    registry.admin("add-member", organisation, member)
    push_image(http(registry.url, member_token), f"{organisation}/shared", "v1")
    outsider_client = http(registry.url, outsider_token)
    assert outsider_client.get(f"/v2/{organisation}/shared/manifests/v1").status_code == 404
    assert error_code(outsider_client.post(f"/v2/{organisation}/other/blobs/uploads/")) == "NAME_UNKNOWN"


def test_malformed_authorization_header(registry: RegistryServer) -> None:
    garbage = base64.b64encode(b"\xff\xfe").decode()
    response = httpx.get(f"{registry.url}/v2/", headers={"Authorization": f"Basic {garbage}"})
    assert (response.status_code, response.json()["errors"][0]["detail"]) == (401, "malformed basic credentials")


def test_a_login_link_logs_in_once_with_the_usual_session(registry: RegistryServer, owner: tuple[str, str]) -> None:
    user, _ = owner
    link = registry.admin("login-link", user)
    assert re.fullmatch(rf"{re.escape(registry.url)}/auth/link\?token=mhl_[A-Za-z0-9_-]{{40,}}", link)
    token = link.partition("token=")[2]
    browser = httpx.Client(base_url=registry.url)
    page = browser.get(link)
    assert page.status_code == 200 and 'type="submit">Log in<' in page.text
    assert "form-action 'self'" in page.headers["content-security-policy"]
    assert browser.get("/auth/session").json() == {"user": None}  # opening it (a link preview) logs no one in
    elsewhere = httpx.post(f"{registry.url}/auth/link", data={"token": token}, headers={"Origin": "https://evil.example"})
    assert elsewhere.status_code == 403  # another site cannot log its visitor in as the link's user
    answer = browser.post("/auth/link", data={"token": token}, headers={"Origin": registry.url})
    assert answer.status_code == 303
    assert browser.get("/auth/session").json() == {"user": user}
    assert browser.get("/api/v1/whoami").json()["name"] == user
    again = httpx.post(f"{registry.url}/auth/link", data={"token": token}, headers={"Origin": registry.url})
    assert again.status_code == 400 and "used already or expired" in again.json()["detail"]
    engine = registry.engine()
    try:
        with make_session_factory(engine)() as db:
            stored = set(db.scalars(select(LoginLink.token_hash)))
            assert hash_token(token) in stored and token not in stored
            expired = create_login_link(db, db.scalar(select(User).where(User.name == user)), timedelta(seconds=-1))
            db.commit()
    finally:
        engine.dispose()
    late = httpx.post(f"{registry.url}/auth/link", data={"token": expired}, headers={"Origin": registry.url})
    assert late.status_code == 400
    result = subprocess.run([*MODELHALL, "admin", "login-link", "nobody-here"], env=registry.env, capture_output=True,
                            text=True)
    assert (result.returncode, result.stdout) == (1, "") and "no user 'nobody-here'" in result.stderr
