"""``modelhall share …`` and ``modelhall visibility``: who may see and run a model."""

from __future__ import annotations

import re
from typing import Annotated, Literal

import typer
from rich.table import Table

from modelhall.cli.output import console, friendly_errors
from modelhall.cli.runs import repository_client

share = typer.Typer(help="Share links for reviewers: demo and runs, never the weights.", no_args_is_help=True)
DURATION = re.compile(r"^(\d+(?:\.\d+)?)([hdw])$")
DAYS_PER_UNIT = {"h": 1 / 24, "d": 1.0, "w": 7.0}


def parse_days(text: str) -> float | None:
    """``30d``, ``12h``, ``2w`` → days; ``never`` → None."""
    if text == "never":
        return None
    match = DURATION.match(text.strip())
    if match is None:
        raise typer.BadParameter(f"{text!r} is not a duration like 12h, 30d, 2w or never")
    return float(match.group(1)) * DAYS_PER_UNIT[match.group(2)]


@share.command("create")
@friendly_errors
def create(repository: Annotated[str, typer.Argument(help="owner/name")],
           expires: Annotated[str, typer.Option(help="12h, 30d, 2w or never")] = "30d",
           anonymous: Annotated[bool, typer.Option(help="hide who owns the model (double-blind review)")] = False,
           pin: Annotated[str | None, typer.Option(help="a tag or digest: the link runs that version only")] = None,
           quota: Annotated[int | None, typer.Option(help="runs allowed through the link")] = None,
           label: Annotated[str, typer.Option(help="a note to recognise the link by")] = "") -> None:
    """Create a share link and print its URL (shown this once)."""
    client, name = repository_client(repository)
    body = {"label": label, "expires_in_days": parse_days(expires), "anonymous": anonymous, "pin": pin,
            "run_quota": quota}
    with client:
        created = client.api("POST", f"/repos/{name}/shares", json=body)
    console.print(f"share link {created['id']} for {name}"
                  f"{' (anonymous)' if created['anonymous'] else ''}"
                  f"{', pinned to ' + created['digest'] if created['digest'] else ''}"
                  f", expires {created['expires_at'] or 'never'}:", highlight=False)
    print(created["url"])


@share.command("list")
@friendly_errors
def list_links(repository: Annotated[str, typer.Argument(help="owner/name")]) -> None:
    """The model's share links, with the runs made through each."""
    client, name = repository_client(repository)
    with client:
        links = client.api("GET", f"/repos/{name}/shares")
    table = Table("id", "label", "state", "anonymous", "pinned to", "expires", "runs")
    for link in links:
        runs = f"{link['runs_used']}" + (f"/{link['run_quota']}" if link["run_quota"] else "")
        table.add_row(str(link["id"]), link["label"], link["state"], "yes" if link["anonymous"] else "",
                      (link["digest"] or "")[:19], (link["expires_at"] or "never")[:16], runs)
    console.print(table)


@share.command("revoke")
@friendly_errors
def revoke(repository: Annotated[str, typer.Argument(help="owner/name")],
           link_id: Annotated[int, typer.Argument(help="the link's id (see `share list`)")]) -> None:
    """Revoke a share link at once."""
    client, name = repository_client(repository)
    with client:
        client.api("DELETE", f"/repos/{name}/shares/{link_id}")
    console.print(f"share link {link_id} of {name} is revoked", highlight=False)


@friendly_errors
def visibility(repository: Annotated[str, typer.Argument(help="owner/name")],
               level: Annotated[Literal["public", "internal", "private"] | None,
                                typer.Argument(help="public, internal or private; omit to show")] = None,
               weights: Annotated[Literal["downloadable", "hidden"] | None,
                                  typer.Option(help="hidden: others may run the model but not pull it")] = None,
               ) -> None:
    """Show or change who may see a model, and whether its weights may be pulled."""
    client, name = repository_client(repository)
    changes = {k: v for k, v in {"visibility": level, "weights": weights}.items() if v is not None}
    with client:
        current = client.api("PATCH", f"/repos/{name}", json=changes) if changes else client.api("GET", f"/repos/{name}")
    console.print(f"{name}: {current['visibility']}, weights {current['weights']}", highlight=False)
