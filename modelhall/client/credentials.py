"""Where ``modelhall login`` keeps credentials: one JSON file, readable by its owner only."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Credentials:
    username: str
    token: str


def credentials_file() -> Path:
    base = os.environ.get("MODELHALL_CONFIG_DIR") or os.path.join(
        os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config", "modelhall")
    return Path(base) / "credentials.json"


def _load_all() -> dict[str, dict[str, str]]:
    path = credentials_file()
    return json.loads(path.read_text()) if path.exists() else {}


def load_credentials(host: str) -> Credentials | None:
    """``MODELHALL_TOKEN`` wins; else what ``modelhall login`` saved for ``host``."""
    token = os.environ.get("MODELHALL_TOKEN")
    if token:
        return Credentials(username=os.environ.get("MODELHALL_USERNAME", ""), token=token)
    saved = _load_all().get(host)
    return Credentials(saved["username"], saved["token"]) if saved else None


def save_credentials(host: str, credentials: Credentials) -> Path:
    path = credentials_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = _load_all()
    entries[host] = {"username": credentials.username, "token": credentials.token}
    temporary = path.with_suffix(".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(entries, out, indent=2)
    os.replace(temporary, path)
    return path
