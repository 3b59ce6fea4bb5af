"""``modelhall runs`` and ``modelhall logs``: what a pushed model did, from the terminal."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from modelhall.cli.output import console, friendly_errors
from modelhall.client.credentials import load_credentials
from modelhall.client.errors import raise_for_response
from modelhall.client.reference import parse_reference
from modelhall.client.registry import RegistryClient
from modelhall.settings import load_settings

MAX_SHOWN = 60


def repository_client(repository: str) -> tuple[RegistryClient, str]:
    reference = parse_reference(repository, load_settings().url)
    client = RegistryClient(reference.registry, load_credentials(reference.host))
    suffix = "" if reference.reference == "latest" else f"@{reference.reference}"
    return client, reference.repository + suffix


def _short(value: object) -> str:
    text = str(value)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 1] + "…"


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
    table = Table("when", "source", "status", "ms", "cold", "caller", "inputs", "outputs or error")
    for run in found:
        caller = run["caller"] or ("(hidden)" if run["caller_hidden"] else "anonymous")
        result = run["error"] if run["status"] == "failed" else run["outputs"]
        table.add_row(run["created_at"][:19].replace("T", " "), run["source"], run["status"],
                      "" if run["duration_ms"] is None else f"{run['duration_ms']:.0f}",
                      {True: "cold", False: "warm", None: ""}[run["cold"]], caller, _short(run["inputs"]),
                      _short(result))
    console.print(table)


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
