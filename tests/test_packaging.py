"""Every package the code imports is one the project declares.

A module installed by hand on a developer's machine hides a missing dependency until CI (or a
user) installs from a clean clone; this test finds it on any machine that has the package.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_FOLDERS = ["modelhall", "registry", "adapters", "showcase"]  # templates run in their own environments
# Model adapters import these inside the model's environment, which the bundle's requirements build.
MODEL_ENVIRONMENT = {"transformers"}


def _declared(*groups: str) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for group in groups:
        requirements += project["optional-dependencies"][group]
    return {canonicalize_name(Requirement(line).name) for line in requirements}


def _imported_top_level(folders: list[str]) -> dict[str, Path]:
    """Top-level module name → a file that imports it (absolute imports only)."""
    found: dict[str, Path] = {}
    for folder in folders:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], path)
    return found


def _undeclared(folders: list[str], declared: set[str], local: set[str]) -> list[str]:
    distributions = packages_distributions()
    missing = []
    for module, path in sorted(_imported_top_level(folders).items()):
        if module in sys.stdlib_module_names or module in local:
            continue
        owners = {canonicalize_name(name) for name in distributions.get(module, [])}
        if not owners:
            missing.append(f"{module} (imported by {path.relative_to(ROOT)}) is not installed at all")
        elif not owners & declared:
            missing.append(f"{module} (imported by {path.relative_to(ROOT)}) comes from {sorted(owners)}, "
                           "which pyproject.toml does not declare")
    return missing


def test_the_shipped_code_imports_only_declared_dependencies() -> None:
    assert _undeclared(SHIPPED_FOLDERS, _declared(), local={"modelhall"} | MODEL_ENVIRONMENT) == []


def test_the_tests_import_only_declared_test_dependencies() -> None:
    """(``train`` is a template's own module, imported from its folder.)"""
    local = {"modelhall", "conftest", "train"} | {path.stem for path in (ROOT / "tests").glob("*.py")} \
        | {path.name for path in (ROOT / "tests").iterdir() if (path / "__init__.py").exists()}
    assert _undeclared(["tests", "bench"], _declared("test", "models"), local=local) == []


def test_an_undeclared_import_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check itself: a module that imports an installed but undeclared package is named."""
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "uses.py").write_text("import pytest\nfrom os import path\n")
    assert _undeclared(["pkg"], {"fastapi"}, local=set()) == [
        "pytest (imported by pkg/uses.py) comes from ['pytest'], which pyproject.toml does not declare"]
