"""Starter bundles for ``modelhall init``; they double as demo content and test fixtures."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent


def template_names() -> list[str]:
    return sorted(p.name for p in ROOT.iterdir() if (p / "modelhall.yaml").exists())


def template_path(name: str) -> Path:
    path = ROOT / name
    if name not in template_names():
        raise KeyError(f"no template {name!r}; choose one of {', '.join(template_names())}")
    return path
