"""Accounts: ``login`` for everyone, ``admin`` to bootstrap users and tokens on the server."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from modelhall.cli.output import console, errors, friendly_errors
from modelhall.client.credentials import Credentials, save_credentials
from modelhall.client.reference import registry_url
from modelhall.client.registry import RegistryClient
from modelhall.registry.auth.scopes import SCOPE_HELP, SCOPES
from modelhall.registry.auth.login_links import LINK_TTL, create_login_link, login_link_url
from modelhall.registry.auth.tokens import create_access_token
from modelhall.registry.db.models import ROLES, Membership, Organization, User
from modelhall.registry.db.session import make_engine, make_session_factory, migrate
from modelhall.settings import load_settings

admin = typer.Typer(help="Manage users, organisations and tokens on this server's database.", no_args_is_help=True)


@friendly_errors
def login(registry: Annotated[str | None, typer.Argument(help="registry URL or host; default MODELHALL_URL")] = None,
          username: Annotated[str, typer.Option("--username", "-u")] = "",
          token: Annotated[str | None, typer.Option("--token", help="access token (prompted for if absent)")] = None,
          token_stdin: Annotated[bool, typer.Option("--token-stdin", help="read the token from stdin")] = False) -> None:
    """Check an access token against the registry and remember it."""
    url = load_settings().url if registry is None else (registry if "://" in registry else registry_url(registry))
    if token_stdin:
        token = sys.stdin.readline().strip()
    elif token is None:
        token = typer.prompt("Access token", hide_input=True)
    with RegistryClient(url, Credentials(username, token)) as client:
        identity = client.api("GET", "/whoami")
    if not identity.get("name"):
        errors.print("Error: the registry did not accept that token.")
        raise typer.Exit(1)
    host = url.split("://", 1)[1].rstrip("/")
    path = save_credentials(host, Credentials(identity["name"], token))
    console.print(f"Logged in to {host} as {identity['name']} (scopes: {', '.join(identity['scopes'])}); "
                  f"saved in {path}", highlight=False)


def _sessions():  # type: ignore[no-untyped-def]
    settings = load_settings()
    engine = make_engine(settings.database_url)
    migrate(engine)
    return make_session_factory(engine)


def _fail(message: str) -> None:
    errors.print(f"Error: {message}", highlight=False)
    raise typer.Exit(1)


def _name_is_free(db, name: str) -> bool:  # type: ignore[no-untyped-def]
    """Users and organisations share one namespace: alice/… belongs to exactly one of them."""
    return (db.scalar(select(User).where(User.name == name)) is None
            and db.scalar(select(Organization).where(Organization.name == name)) is None)


@admin.command("create-user")
def create_user(name: str, email: Annotated[str | None, typer.Option()] = None,
                is_admin: Annotated[bool, typer.Option("--admin", help="may do anything")] = False) -> None:
    """Create a user whose namespace is NAME."""
    with _sessions()() as db:
        if not _name_is_free(db, name):
            _fail(f"the name {name!r} is taken")
        db.add(User(name=name, email=email, is_admin=is_admin))
        try:
            db.commit()
        except IntegrityError:
            _fail(f"the name {name!r} is taken")
    console.print(f"created user {name}", highlight=False)


@admin.command("create-org")
def create_org(name: str) -> None:
    """Create an organisation whose namespace is NAME."""
    with _sessions()() as db:
        if not _name_is_free(db, name):
            _fail(f"the name {name!r} is taken")
        db.add(Organization(name=name))
        db.commit()
    console.print(f"created organisation {name}", highlight=False)


@admin.command("add-member")
def add_member(organisation: str, user: str,
               role: Annotated[str, typer.Option(help="reader, maintainer or owner")] = "maintainer") -> None:
    """Give USER a role in ORGANISATION: readers see and run its private models, maintainers also push."""
    with _sessions()() as db:
        org = db.scalar(select(Organization).where(Organization.name == organisation))
        member = db.scalar(select(User).where(User.name == user))
        if org is None or member is None:
            _fail(f"no organisation {organisation!r}" if org is None else f"no user {user!r}")
        if role not in ROLES:
            _fail(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
        db.merge(Membership(organization_id=org.id, user_id=member.id, role=role))
        db.commit()
    console.print(f"{user} is a {role} of {organisation}", highlight=False)


@admin.command("create-token")
def create_token(user: str,
                 scope: Annotated[list[str], typer.Option("--scope", help=f"one of {', '.join(SCOPES)}. {SCOPE_HELP}")] = ["read"],  # noqa: B006
                 name: Annotated[str, typer.Option("--name", help="a note to recognise the token by")] = "") -> None:
    """Create an access token for USER and print it (only the token, on stdout, once)."""
    with _sessions()() as db:
        owner = db.scalar(select(User).where(User.name == user))
        if owner is None:
            _fail(f"no user {user!r}; create it with `modelhall admin create-user {user}`")
        try:
            token = create_access_token(db, owner, set(scope), name=name)
        except ValueError as error:
            _fail(str(error))
        db.commit()
    print(token)


@admin.command("login-link")
def login_link(user: str) -> None:
    """Print a one-time link that logs USER in to the registry and the gallery (only the link, on stdout).

    It works once, within 15 minutes; only its hash is stored."""
    with _sessions()() as db:
        owner = db.scalar(select(User).where(User.name == user))
        if owner is None:
            _fail(f"no user {user!r}; create it with `modelhall admin create-user {user}`")
        token = create_login_link(db, owner, LINK_TTL)
        db.commit()
    print(login_link_url(load_settings().url, token))
