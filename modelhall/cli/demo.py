"""``modelhall up --demo``: seed a demo account and push every starter bundle once the registry is up."""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from pathlib import Path

import uvicorn
from rich.console import Console
from sqlalchemy import select, update

from modelhall.bundle import pack_bundle
from modelhall.client.credentials import Credentials
from modelhall.client.reference import parse_reference
from modelhall.client.registry import RegistryClient
from modelhall.client.transfer import push_bundle
from modelhall.registry.auth.login_links import create_login_link, login_link_url
from modelhall.registry.auth.tokens import create_access_token
from modelhall.registry.context import RegistryContext
from modelhall.registry.db.models import AccessToken, User
from modelhall.templates import template_path, template_names

DEMO_USER = "demo"
DEMO_TOKEN_NAME = "make demo"


def demo_credentials(context: RegistryContext) -> tuple[str, str]:
    """A write token for the demo user and a one-time login link for it, with the user created if need be.

    The token replaces the one the previous ``make demo`` printed (revoked: only its hash was kept,
    so it cannot be shown again), so each run leaves one demo token valid, not one more."""
    with context.sessions() as db:
        user = db.scalar(select(User).where(User.name == DEMO_USER))
        if user is None:
            user = User(name=DEMO_USER)
            db.add(user)
            db.flush()
        db.execute(update(AccessToken).where(AccessToken.user_id == user.id, AccessToken.name == DEMO_TOKEN_NAME)
                   .values(revoked=True))
        token = create_access_token(db, user, {"write"}, name=DEMO_TOKEN_NAME)
        link = create_login_link(db, user)
        db.commit()
    return token, login_link_url(context.settings.url, link)


def cli_command() -> str:
    """How to run ``modelhall`` as printed: its name when PATH finds this one, else its path (``.venv/bin/modelhall``)."""
    installed = Path(sys.executable).parent / "modelhall"  # the console script beside this interpreter
    on_path = shutil.which("modelhall")
    if on_path and Path(on_path).resolve() == installed.resolve():
        return "modelhall"
    relative = os.path.relpath(installed)
    return str(installed) if relative.startswith("..") else relative


def push_templates(server: uvicorn.Server, context: RegistryContext, url: str, console: Console) -> None:
    """Wait until ``server`` listens, then push each template as a public ``demo/<name>:latest``."""
    while not server.started:
        if server.should_exit:
            return
        time.sleep(0.05)
    token, link = demo_credentials(context)
    with RegistryClient(url, Credentials(DEMO_USER, token)) as client:
        for name in template_names():
            reference = parse_reference(f"{DEMO_USER}/{name}:latest", url)
            with pack_bundle(template_path(name)) as packed:
                result = push_bundle(client, reference, packed, console)
            client.api("PATCH", f"/repos/{reference.repository}", json={"visibility": "public"})
            console.print(f"  {reference}  {result.digest[:19]}  demo: {url}/demo/{reference.repository}/",
                          highlight=False)
    modelhall = cli_command()
    console.print(f"\nDemo ready. Log in to the gallery as {DEMO_USER} (once, within 15 minutes; "
                  f"`{modelhall} admin login-link {DEMO_USER}` makes another):\n  {link}\n"
                  f"Push your own (this token replaces the one an earlier `make demo` printed):\n"
                  f"  export MODELHALL_URL={url} MODELHALL_TOKEN={token}\n"
                  f"  {modelhall} init my-model && {modelhall} push my-model {DEMO_USER}/my-model:v1 --public",
                  highlight=False)


def start_seeding(server: uvicorn.Server, context: RegistryContext, url: str, console: Console) -> threading.Thread:
    thread = threading.Thread(target=push_templates, args=(server, context, url, console), daemon=True)
    thread.start()
    return thread
