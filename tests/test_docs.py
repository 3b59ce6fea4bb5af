"""The README documents every setting the platform reads."""

from __future__ import annotations

from pathlib import Path

from modelhall.settings import Settings

README = Path(__file__).resolve().parent.parent / "README.md"


def test_every_setting_is_in_the_readme() -> None:
    readme = README.read_text()
    undocumented = [name for name in (f"MODELHALL_{field.upper()}" for field in Settings.model_fields)
                    if f"`{name}`" not in readme]
    assert undocumented == []
