"""``modelhall runs`` and ``modelhall logs``: what a pushed model did, from the terminal."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table

from modelhall.cli.output import console, friendly_errors
from modelhall.client.credentials import load_credentials
from modelhall.client.errors import raise_for_response
from modelhall.client.reference import parse_reference
from modelhall.client.registry import RegistryClient
from modelhall.settings import load_settings

MAX_SHOWN = 60
CALLER_WIDTH = 16  # longer names wrap onto a second line, whole


def repository_client(repository: str) -> tuple[RegistryClient, str]:
    reference = parse_reference(repository, load_settings().url)
    client = RegistryClient(reference.registry, load_credentials(reference.host))
    suffix = "" if reference.reference == "latest" else f"@{reference.reference}"
    return client, reference.repository + suffix


def _short(value: object) -> str:
    """Inputs or outputs as ``name=value`` pairs, cut at :data:`MAX_SHOWN` characters."""
    text = ", ".join(f"{name}={item}" for name, item in value.items()) if isinstance(value, dict) else str(value)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 1] + "…"


def _when(created_at: str, now: datetime) -> str:
    """A run's time in the viewer's zone: the time alone today, month and day this year, else the date."""
    moment = datetime.fromisoformat(created_at)
    moment = (moment if moment.tzinfo else moment.replace(tzinfo=now.tzinfo)).astimezone(now.tzinfo)
    if moment.date() == now.date():
        return moment.strftime("%H:%M:%S")
    return moment.strftime("%m-%d %H:%M" if moment.year == now.year else "%Y-%m-%d")


def _milliseconds(duration: float | None) -> str:
    """Two significant digits at least: a run of 0.3 ms is not "0"."""
    if duration is None:
        return ""
    return f"{duration:.2f}" if duration < 1 else f"{duration:.1f}" if duration < 10 else f"{duration:.0f}"


def runs_table(found: list[dict[str, Any]], now: datetime) -> Table:
    """The runs as a table that stays readable at 80 columns: time, source, status, duration and
    start are never cut, nor the caller (a long name wraps); inputs and outputs wrap in what is left."""
    table = Table(box=None, pad_edge=False, collapse_padding=True, header_style="bold")
    for header in ("when", "source", "status"):
        table.add_column(header, no_wrap=True)
    table.add_column("ms", justify="right", no_wrap=True)
    table.add_column("start", no_wrap=True)
    table.add_column("caller", overflow="fold", max_width=CALLER_WIDTH)
    table.add_column("inputs → outputs", overflow="fold", ratio=1)
    for run in found:
        caller = run["caller"] or ("(hidden)" if run["caller_hidden"] else "anonymous")
        result = f"error: {run['error']}" if run["status"] == "failed" else run["outputs"]
        table.add_row(_when(run["created_at"], now), run["source"], run["status"], _milliseconds(run["duration_ms"]),
                      {True: "cold", False: "warm", None: ""}[run["cold"]], caller,
                      f"{_short(run['inputs'])} → {_short(result)}")
    return table


@friendly_errors
def runs(repository: Annotated[str, typer.Argument(help="owner/name")],
         status: Annotated[str | None, typer.Option(help="queued, running, succeeded or failed")] = None,
         source: Annotated[str | None, typer.Option(help="api, demo or async")] = None,
         limit: Annotated[int, typer.Option(help="how many, newest first")] = 20) -> None:
    """List a model's recent runs."""
    client, name = repository_client(repository)
    params = {k: v for k, v in {"status": status, "source": source, "limit": limit}.items() if v is not None}
    with client:
        found = client.api("GET", f"/repos/{name.split('@')[0]}/runs", params=params)
    console.print(runs_table(found, datetime.now().astimezone()))


@friendly_errors
def logs(repository: Annotated[str, typer.Argument(help="owner/name, owner/name:tag or owner/name@digest")],
         build: Annotated[bool, typer.Option("--build", help="the environment build's log")] = False,
         lines: Annotated[int, typer.Option(help="how many lines from the end")] = 200) -> None:
    """Show the newest worker's output, or with --build the environment build's log."""
    client, name = repository_client(repository)
    with client:
        response = client.http.get(f"/api/v1/repos/{name}/deployment/logs",
                                   params={"build": str(build).lower(), "lines": lines})
    raise_for_response(response, f"logs of {repository}")
    print(response.text)
