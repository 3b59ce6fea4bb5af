"""One-time login links, for a registry with no OpenID provider (``make demo``) or a first admin.

    modelhall admin login-link USER   →  {MODELHALL_URL}/auth/link?token=mhl_…
    GET  /auth/link?token=…           a page with one button (opening a link logs nobody in:
                                      link previews and prefetchers open links too)
    POST /auth/link                   spends the link and sets the usual session, as an OpenID login does

A link is a capability like an access token: 256 random bits, only its SHA-256 stored, shown
once. It is spent by its first login (one UPDATE that only an unspent, unexpired link
matches, so two replicas cannot both take it) and dies after a few minutes. The POST must
come from the registry's own page: another site cannot log a visitor into its author's
account (login CSRF).
"""

from __future__ import annotations

import html
import secrets
from datetime import timedelta
from urllib.parse import urlsplit

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from modelhall.registry.auth.tokens import hash_token
from modelhall.registry.context import get_context
from modelhall.registry.db.models import LoginLink, User, utcnow

LINK_PREFIX = "mhl_"
LINK_TTL = timedelta(minutes=15)
LINK_PATH = "/auth/link"

router = APIRouter(prefix="/auth", tags=["auth"])


def create_login_link(db: Session, user: User, ttl: timedelta = LINK_TTL) -> str:
    """A new link's token for ``user`` (only its hash is stored); the caller commits."""
    token = LINK_PREFIX + secrets.token_urlsafe(32)
    db.add(LoginLink(user_id=user.id, token_hash=hash_token(token), expires_at=utcnow() + ttl))
    db.flush()
    return token


def login_link_url(registry_url: str, token: str) -> str:
    return f"{registry_url.rstrip('/')}{LINK_PATH}?token={token}"


def spend_login_link(db: Session, token: str) -> int | None:
    """The user a valid link logs in, the link spent by it; None for an unknown, spent or expired one."""
    now = utcnow()
    spent = db.execute(update(LoginLink).where(LoginLink.token_hash == hash_token(token), LoginLink.used_at.is_(None),
                                               LoginLink.expires_at > now).values(used_at=now))
    if spent.rowcount != 1:
        db.rollback()
        return None
    user_id = db.scalar(select(LoginLink.user_id).where(LoginLink.token_hash == hash_token(token)))
    db.commit()
    return user_id


LINK_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>Log in · Modelhall</title>
<style>body{{font-family:sans-serif;margin:4rem}}button{{font-size:1.1rem;padding:.5rem 1.2rem}}</style></head>
<body><h1>Log in to Modelhall</h1><p>This one-time link logs you in to {registry}. It works once, for a few
minutes.</p><form method="post" action="/auth/link"><input type="hidden" name="token" value="{token}">
<button type="submit">Log in</button></form></body></html>"""


@router.get("/link", response_class=HTMLResponse)
def login_link_page(request: Request, token: str = "") -> HTMLResponse:
    """The button that spends the link (a GET changes nothing)."""
    registry = get_context(request).settings.url
    return HTMLResponse(LINK_PAGE.format(registry=html.escape(registry), token=html.escape(token[:128], quote=True)))


@router.post("/link")
def login_with_link(request: Request, token: str = Form(max_length=128)) -> Response:
    """Spend the link and start the session; then to the gallery when there is one."""
    settings = get_context(request).settings
    source = request.headers.get("origin") or request.headers.get("referer") or ""
    parts = urlsplit(source)
    if f"{parts.scheme}://{parts.netloc}".lower() != settings.url.rstrip("/").lower():
        raise HTTPException(403, "a login link is used from the registry's own page")
    with get_context(request).sessions() as db:
        user_id = spend_login_link(db, token)
    if user_id is None:
        raise HTTPException(400, "this login link is unknown, used already or expired: ask for a new one "
                                 "(modelhall admin login-link USER)")
    request.session.clear()  # nothing from before the login survives it (session fixation)
    request.session["user_id"] = user_id
    return RedirectResponse(f"{settings.gallery_url.rstrip('/')}/" if settings.gallery_url else "/", status_code=303)
