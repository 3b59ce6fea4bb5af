"""``modelhall up --demo``: seed a demo account and push every starter bundle once the registry is up."""

from __future__ import annotations

import threading
import time

import uvicorn
from rich.console import Console
from sqlalchemy import select

from modelhall.bundle import pack_bundle
from modelhall.client.credentials import Credentials
from modelhall.client.reference import parse_reference
from modelhall.client.registry import RegistryClient
from modelhall.client.transfer import push_bundle
from modelhall.registry.auth.tokens import create_access_token
from modelhall.registry.context import RegistryContext
from modelhall.registry.db.models import User
from modelhall.templates import template_path, template_names

DEMO_USER = "demo"


def demo_token(context: RegistryContext) -> str:
    """A fresh write token for the demo user, created with the user if need be."""
    with context.sessions() as db:
        user = db.scalar(select(User).where(User.name == DEMO_USER))
        if user is None:
            user = User(name=DEMO_USER)
            db.add(user)
            db.flush()
        token = create_access_token(db, user, {"write"}, name="make demo")
        db.commit()
    return token


def push_templates(server: uvicorn.Server, context: RegistryContext, url: str, console: Console) -> None:
    """Wait until ``server`` listens, then push each template as a public ``demo/<name>:latest``."""
    while not server.started:
        if server.should_exit:
            return
        time.sleep(0.05)
    token = demo_token(context)
    with RegistryClient(url, Credentials(DEMO_USER, token)) as client:
        for name in template_names():
            reference = parse_reference(f"{DEMO_USER}/{name}:latest", url)
            with pack_bundle(template_path(name)) as packed:
                result = push_bundle(client, reference, packed, console)
            client.api("PATCH", f"/repos/{reference.repository}", json={"visibility": "public"})
            console.print(f"  {reference}  {result.digest[:19]}  demo: {url}/demo/{reference.repository}/",
                          highlight=False)
    console.print(f"\nDemo ready. Push your own with:\n  export MODELHALL_URL={url} MODELHALL_TOKEN={token}\n"
                  f"  modelhall init my-model && modelhall push my-model {DEMO_USER}/my-model:v1", highlight=False)


def start_seeding(server: uvicorn.Server, context: RegistryContext, url: str, console: Console) -> threading.Thread:
    thread = threading.Thread(target=push_templates, args=(server, context, url, console), daemon=True)
    thread.start()
    return thread
