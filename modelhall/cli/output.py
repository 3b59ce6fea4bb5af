"""How the CLI talks: Rich consoles, and one line per error that says what to do next."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import httpx
import typer
from rich.console import Console
from rich.markup import escape

from modelhall.bundle import PackError, UnsafeArchiveError
from modelhall.bundle.from_huggingface import HuggingFaceImportError
from modelhall.client.errors import NotFoundError, NotLoggedInError, RegistryError
from modelhall.client.reference import InvalidReferenceError
from modelhall.spec import SpecError

console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)
P = ParamSpec("P")
R = TypeVar("R")


def hint_for(error: Exception) -> str | None:
    if isinstance(error, NotLoggedInError):
        return "Not logged in, or the token is wrong. Run `modelhall login` or set MODELHALL_TOKEN."
    if isinstance(error, NotFoundError):
        return "Check the name and tag, and that you may see this repository."
    if isinstance(error, httpx.ConnectError):
        return "Is the registry running? Start it with `modelhall up`, or set MODELHALL_URL."
    return None


def friendly_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn expected failures into a red line and exit code 1, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except (SpecError, PackError, UnsafeArchiveError, RegistryError, InvalidReferenceError,
                HuggingFaceImportError, FileExistsError, httpx.HTTPError) as error:
            errors.print(f"[red]Error:[/red] {escape(str(error))}", highlight=False)
            hint = hint_for(error)
            if hint:
                errors.print(hint, highlight=False)
            raise typer.Exit(1) from None

    return wrapper
