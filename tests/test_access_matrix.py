"""Who sees what, generated: every principal × visibility × weights × surface, against a live registry.

The expected answer of each cell comes from the rules below, written out here on their
own (not by asking the registry's policy), so the registry is checked against them. A
cell also checks that a principal who may not see a repository finds its name in no
response body.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest

from conftest import RegistryServer, serve_registry, unique
from modelhall.bundle import pack_bundle
from modelhall.templates import template_path
from oci_helpers import http, push_packed
from test_runtime import wait_for

VISIBILITIES = ("public", "internal", "private")
WEIGHTS = ("downloadable", "hidden")
MEMBERS = ("org reader", "org maintainer", "owner", "token without the scope", "token with it")
LINKS = ("valid share link", "pinned share link", "anonymous share link")
DEAD_LINKS = ("expired link", "revoked link")
PRINCIPALS = ("anonymous", "logged-in stranger", *MEMBERS, *LINKS, *DEAD_LINKS)
SURFACES = ("oci pull", "oci push", "rest read", "rest write", "demo", "predict", "run history", "listing")


def can_see(principal: str, visibility: str) -> bool:
    return (principal in MEMBERS or principal in LINKS or visibility == "public"
            or (visibility == "internal" and principal == "logged-in stranger"))


def expected_status(principal: str, visibility: str, weights: str, surface: str) -> int:
    """The rules of the issue, cell by cell."""
    if principal in DEAD_LINKS:
        return 401  # a link that no longer opens anything is refused as credentials, wherever it is sent
    if surface == "listing":
        return 200
    anonymous = principal == "anonymous"
    if not can_see(principal, visibility):
        return 401 if anonymous and surface in ("oci pull", "oci push", "rest write", "run history") else 404
    member = principal in MEMBERS
    logged_in = member or principal == "logged-in stranger"  # share links carry no user
    audience = visibility == "public" or (visibility == "internal" and logged_in)
    allowed = {
        "oci pull": member or (audience and weights == "downloadable"),
        "oci push": principal in ("org maintainer", "owner", "token with it"),
        "rest read": True,
        "rest write": principal in ("org maintainer", "owner", "token with it"),
        "demo": True,
        "predict": True,
        "run history": (member and principal != "token without the scope") or principal in LINKS,
    }[surface]
    if allowed:
        return 202 if surface == "oci push" else 200
    return 401 if anonymous and surface != "oci pull" or anonymous and weights == "hidden" else 403


@dataclass
class World:
    registry: RegistryServer
    organisation: str
    headers: dict[str, dict[str, str]]  # principal → request headers
    repositories: dict[tuple[str, str], str]  # (visibility, weights) → name


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _token(registry: RegistryServer, user: str, scope: str) -> str:
    from sqlalchemy import select

    from modelhall.registry.auth.tokens import create_access_token
    from modelhall.registry.db.models import User
    from modelhall.registry.db.session import make_session_factory

    engine = registry.engine()
    try:
        with make_session_factory(engine)() as db:
            token = create_access_token(db, db.scalar(select(User).where(User.name == user)), {scope})
            db.commit()
            return token
    finally:
        engine.dispose()


def _share(owner: httpx.Client, repository: str, **options: object) -> tuple[int, str]:
    created = owner.post(f"/api/v1/repos/{repository}/shares", json=options)
    assert created.status_code == 201, created.text
    return created.json()["id"], created.json()["url"].rsplit("/", 1)[1]


@pytest.fixture(scope="module")
def world(database_kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    data = tmp_path_factory.mktemp("matrix")
    for registry in serve_registry(database_kind, data / "registry", {"MODELHALL_REAPER_INTERVAL": "1",
                                                                             "MODELHALL_LOG_LEVEL": "info"}):
        organisation = unique("lab")
        registry.admin("create-org", organisation)
        owner, owner_token = registry.user("admin")
        registry.admin("add-member", organisation, owner, "--role", "owner")
        people = {"logged-in stranger": registry.user()[1]}
        for role in ("reader", "maintainer"):
            name, token = registry.user()
            registry.admin("add-member", organisation, name, "--role", role)
            people[f"org {role}"] = token
        client = http(registry.url, owner_token)
        repositories = {}
        for visibility, weights in itertools.product(VISIBILITIES, WEIGHTS):
            name = f"{organisation}/{visibility}-{weights}"
            with pack_bundle(template_path("hello")) as packed:
                push_packed(client, name, "v1", packed)
                push_packed(client, name, "latest", packed)
            client.patch(f"/api/v1/repos/{name}", json={"visibility": visibility, "weights": weights}
                         ).raise_for_status()
            assert client.post(f"/api/v1/repos/{name}/predict", json={"inputs": {"name": "warm"}},
                               timeout=180).status_code == 200  # every worker warm before the matrix
            repositories[(visibility, weights)] = name
        headers = {"anonymous": {}, "owner": _bearer(owner_token),
                   "token without the scope": _bearer(_token(registry, owner, "read")),
                   "token with it": _bearer(_token(registry, owner, "admin")),
                   **{who: _bearer(token) for who, token in people.items()}}
        links: dict[str, dict[str, str]] = {who: {} for who in (*LINKS, *DEAD_LINKS)}
        for name in repositories.values():  # one link of each kind per repository, sent as a header
            links["valid share link"][name] = _share(client, name)[1]
            links["pinned share link"][name] = _share(client, name, pin="v1")[1]
            links["anonymous share link"][name] = _share(client, name, anonymous=True)[1]
            links["expired link"][name] = _share(client, name, expires_in_days=1 / 86400)[1]
            revoked, links["revoked link"][name] = _share(client, name)
            client.delete(f"/api/v1/repos/{name}/shares/{revoked}").raise_for_status()
        first = next(iter(repositories.values()))
        wait_for(lambda: httpx.get(f"{registry.url}/api/v1/shared", headers={
            "X-Modelhall-Share": links["expired link"][first]}).status_code == 401, "the short link expiring")
        opened = httpx.get(f"{registry.url}/s/{links['valid share link'][first]}")  # a token in a logged path
        assert opened.status_code == 303
        yield World(registry, organisation, {**headers, **_flatten(links)}, repositories)


def _flatten(links: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    """Share principals carry a different link per repository: ``principal|repository`` → header."""
    return {f"{who}|{name}": {"X-Modelhall-Share": token} for who, per_repo in links.items()
            for name, token in per_repo.items()}


def _headers(world: World, principal: str, repository: str) -> dict[str, str]:
    return world.headers[principal] if principal in world.headers else world.headers[f"{principal}|{repository}"]


def call(world: World, principal: str, repository: str, surface: str) -> httpx.Response:
    headers = _headers(world, principal, repository)
    client = httpx.Client(base_url=world.registry.url, headers=headers, timeout=120)
    demo = httpx.Client(base_url=world.registry.demo_url, headers=headers, timeout=120)  # the demos' own origin
    requests: dict[str, Callable[[], httpx.Response]] = {
        "oci pull": lambda: client.get(f"/v2/{repository}/manifests/v1",
                                       headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}),
        "oci push": lambda: client.post(f"/v2/{repository}/blobs/uploads/"),
        "rest read": lambda: client.get(f"/api/v1/repos/{repository}"),
        "rest write": lambda: client.patch(f"/api/v1/repos/{repository}", json={"description": "changed"}),
        "demo": lambda: demo.get(f"/demo/{repository}/config"),
        "predict": lambda: client.post(f"/api/v1/repos/{repository}/predict", json={"inputs": {"name": "m"}}),
        "run history": lambda: client.get(f"/api/v1/repos/{repository}/runs"),
        "listing": lambda: client.get("/api/v1/repos", params={"q": repository.split("/")[1], "limit": 200}),
    }
    with client, demo:
        return requests[surface]()


CELLS = list(itertools.product(PRINCIPALS, VISIBILITIES, WEIGHTS, SURFACES))


@pytest.mark.parametrize(("principal", "visibility", "weights", "surface"), CELLS,
                         ids=["-".join(cell).replace(" ", "_") for cell in CELLS])
def test_access(world: World, principal: str, visibility: str, weights: str, surface: str) -> None:
    repository = world.repositories[(visibility, weights)]
    response = call(world, principal, repository, surface)
    assert response.status_code == expected_status(principal, visibility, weights, surface), response.text[:300]
    sees = can_see(principal, visibility) and principal not in DEAD_LINKS
    if surface == "listing" and response.status_code == 200:
        listed = {entry["name"] for entry in response.json()}
        assert (repository in listed) == sees
    if not sees:
        assert repository not in response.text and world.organisation not in response.text


def test_the_matrix_covers_every_combination() -> None:
    assert len(CELLS) == 12 * 3 * 2 * 8


def test_no_token_appears_in_the_registry_log(world: World) -> None:
    log = world.registry.data_dir.parent / f"registry-{world.registry.port}.log"
    text = log.read_text(errors="replace")
    assert "GET /s/mhs_[redacted]" in text  # the access log was on, and saw a share link's path
    secrets = [value.split(" ", 1)[-1] for headers in world.headers.values() for value in headers.values()]
    assert len(secrets) > 30 and not [secret for secret in secrets if secret in text]
