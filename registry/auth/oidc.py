"""Logging in through OpenID Connect providers (and GitHub), with Authlib.

    GET  /auth/providers            the configured providers, for login buttons
    GET  /auth/login/{provider}     → the provider (authorization code + PKCE, state, nonce)
    GET  /auth/callback/{provider}  ← the provider: the code exchanged, the ID token verified
    GET  /auth/session              who the session is
    POST /auth/logout               forget the session

Authlib keeps ``state``, the PKCE verifier and the nonce in the signed session cookie
between the two legs, and checks the ID token's signature, issuer, audience, expiry and
nonce. A user is created on their first login; organisation memberships follow the
provider's group claim at every login (see :func:`sync_memberships`).
"""

from __future__ import annotations

import html
import re
from typing import Any

from authlib.common.errors import AuthlibBaseError
from authlib.integrations.starlette_client import OAuth
from fastapi import APIRouter, HTTPException, Request
from joserfc.errors import JoseError  # Authlib verifies ID tokens with joserfc
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from modelhall.registry.context import get_context
from modelhall.registry.db.models import ROLES, Identity, Membership, Organization, User
from modelhall.settings import GITHUB, OIDCProvider, Settings

router = APIRouter(prefix="/auth", tags=["auth"])
GITHUB_ISSUER = "https://github.com"
NAME_FALLBACK = "user"


def make_oauth(settings: Settings) -> OAuth:
    oauth = OAuth()
    for provider in settings.oidc_providers:
        if provider.preset == "github":
            oauth.register(provider.name, client_id=provider.client_id, client_secret=provider.client_secret,
                           client_kwargs={"scope": "read:user user:email"}, **GITHUB)
        else:
            oauth.register(provider.name, client_id=provider.client_id, client_secret=provider.client_secret,
                           server_metadata_url=provider.discovery_url,
                           client_kwargs={"scope": provider.scope, "code_challenge_method": "S256"})
    return oauth


def _provider(request: Request, name: str) -> OIDCProvider:
    for provider in get_context(request).settings.oidc_providers:
        if provider.name == name:
            return provider
    raise HTTPException(404, f"no login provider {name!r}")


def _safe_next(request: Request, target: str | None) -> str:
    """A path on this site, or a page of the gallery: a login must not become an open redirect."""
    if not target or "\\" in target:
        return "/"
    if target.startswith("/") and not target.startswith("//"):
        return target
    gallery = get_context(request).settings.gallery_url
    if gallery and (target == gallery or target.startswith(gallery.rstrip("/") + "/")):
        return target
    return "/"


@router.get("/providers")
def providers(request: Request) -> list[dict[str, str]]:
    return [{"name": p.name, "login": f"/auth/login/{p.name}"} for p in get_context(request).settings.oidc_providers]


@router.get("/login/{name}")
async def login(name: str, request: Request, next: str | None = None) -> Response:  # noqa: A002 - the usual name
    _provider(request, name)
    request.session["next"] = _safe_next(request, next)
    client = request.app.state.oauth.create_client(name)
    return await client.authorize_redirect(request, str(request.url_for("oidc_callback", name=name)))


@router.get("/callback/{name}", name="oidc_callback")
async def callback(name: str, request: Request) -> Response:
    provider = _provider(request, name)
    client = request.app.state.oauth.create_client(name)
    try:
        token = await client.authorize_access_token(request)
        if provider.preset == "github":
            claims = (await client.get("user", token=token)).json()
            issuer, subject, username = GITHUB_ISSUER, str(claims["id"]), claims.get("login")
        else:
            claims = dict(token["userinfo"])
            issuer, subject, username = claims["iss"], claims["sub"], claims.get(provider.username_claim)
    except (AuthlibBaseError, JoseError) as error:  # a mismatching state, a refused code, an ID token that fails
        raise HTTPException(400, f"login failed: {error.description or error.error}") from None
    except KeyError as error:
        raise HTTPException(400, f"login failed: the provider sent no {error.args[0]!r}") from None
    context = get_context(request)
    with context.sessions() as db:
        user = user_for_identity(db, issuer, subject, username or claims.get("email"))
        sync_memberships(db, user, provider, claims.get(provider.groups_claim))
        db.commit()
        user_id = user.id
    target = request.session.pop("next", "/")
    request.session.clear()  # nothing from before the login survives it (session fixation)
    request.session["user_id"] = user_id
    return RedirectResponse(_safe_next(request, target), status_code=303)


@router.get("/session")
def session(request: Request) -> dict[str, Any]:
    context = get_context(request)
    with context.sessions() as db:
        user = db.get(User, request.session.get("user_id", -1))
        return {"user": user.name if user else None}


LOGOUT_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>Log out · Modelhall</title>
<style>body{{font-family:sans-serif;margin:4rem}}button{{font-size:1.1rem;padding:.5rem 1.2rem}}</style></head>
<body><h1>Log out of Modelhall?</h1><form method="post" action="/auth/logout">
<input type="hidden" name="next" value="{next}"><button type="submit">Log out</button></form></body></html>"""


@router.get("/logout", response_class=HTMLResponse)
def logout_page(request: Request, next: str | None = None) -> HTMLResponse:  # noqa: A002 - the usual name
    """A button that logs out: the POST it sends comes from this site, so it passes the origin check."""
    return HTMLResponse(LOGOUT_PAGE.format(next=html.escape(_safe_next(request, next), quote=True)))


@router.post("/logout")
async def logout(request: Request) -> Response:
    """Forget the session; with a ``next`` form field, go there after."""
    request.session.clear()
    form = await request.form() if "form" in request.headers.get("content-type", "") else {}
    target = form.get("next") if isinstance(form.get("next"), str) else None
    if target:
        return RedirectResponse(_safe_next(request, target), status_code=303)  # type: ignore[arg-type]
    return JSONResponse({"user": None})


def _namespace_name(wanted: str | None) -> str:
    base = (wanted or NAME_FALLBACK).split("@")[0].lower()
    base = re.sub(r"[^a-z0-9]+", "-", base).strip("-")[:48]
    return base or NAME_FALLBACK


def _free_name(db: Session, wanted: str) -> str:
    candidate, number = wanted, 1
    while (db.scalar(select(User.id).where(User.name == candidate)) is not None
           or db.scalar(select(Organization.id).where(Organization.name == candidate)) is not None):
        number += 1
        candidate = f"{wanted}-{number}"
    return candidate


def user_for_identity(db: Session, issuer: str, subject: str, username: str | None) -> User:
    """The user this login belongs to, created (with a free namespace) on the first one."""
    identity = db.scalar(select(Identity).where(Identity.issuer == issuer, Identity.subject == subject))
    if identity is not None:
        user = db.get(User, identity.user_id)
        assert user is not None
        return user
    user = User(name=_free_name(db, _namespace_name(username)))
    db.add(user)
    db.flush()
    db.add(Identity(user_id=user.id, issuer=issuer, subject=subject))
    return user


def sync_memberships(db: Session, user: User, provider: OIDCProvider, groups: object) -> None:
    """Make the memberships this provider granted match the groups it sends now.

    Memberships given by hand (``source = manual``) are left alone; an organisation named
    by the mapping is created if it does not exist yet.
    """
    wanted: dict[str, str] = {}
    for group in groups if isinstance(groups, list) else []:
        target = provider.organisations.get(str(group))
        if target:
            organisation, _, role = target.partition(":")
            role = role if role in ROLES else "reader"
            wanted[organisation] = max(wanted.get(organisation, role), role, key=ROLES.index)
    source = f"oidc:{provider.name}"
    db.execute(delete(Membership).where(Membership.user_id == user.id, Membership.source == source))
    for organisation_name, role in wanted.items():
        organisation = db.scalar(select(Organization).where(Organization.name == organisation_name))
        if organisation is None:
            organisation = Organization(name=organisation_name)
            db.add(organisation)
            db.flush()
        existing = db.get(Membership, (organisation.id, user.id))
        if existing is None:
            db.add(Membership(organization_id=organisation.id, user_id=user.id, role=role, source=source))
