"""Access token scopes, ranked: a token holds its highest scope and every one below it."""

from __future__ import annotations

SCOPES = ("read", "deploy", "write", "admin")
SCOPE_HELP = ("read: see, pull and run; deploy: also run history, logs and deployments; "
              "write: also push, delete, settings and share links; admin: also tokens and organisations")


def expand_scopes(scopes: set[str] | frozenset[str]) -> frozenset[str]:
    """``scopes`` and every scope below the highest of them; an unknown scope is a ValueError."""
    unknown = set(scopes) - set(SCOPES)
    if unknown:
        raise ValueError(f"unknown scope {sorted(unknown)[0]!r}; use one of {', '.join(SCOPES)}")
    highest = max((SCOPES.index(scope) for scope in scopes), default=-1)
    return frozenset(SCOPES[: highest + 1])
