"""Environment builds with uv: keyed by their inputs, grown from the closest one, failures leave nothing."""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

import pytest

from modelhall.adapters.runtimes.environments import (
    EnvironmentBuildError,
    EnvironmentBuilder,
    EnvironmentSpec,
    default_python,
    parse_requirements,
)


def make_wheel(wheelhouse: Path, name: str, version: str) -> None:
    """A minimal pure-Python wheel, so the tests need no package index."""
    dist = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(wheelhouse / f"{name}-{version}-py3-none-any.whl", "w") as wheel:
        wheel.writestr(f"{name}/__init__.py", f"VERSION = {version!r}\n")
        wheel.writestr(f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        wheel.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: modelhall-tests\nRoot-Is-Purelib: true\n"
                                        "Tag: py3-none-any\n")
        wheel.writestr(f"{dist}/RECORD", "")


@pytest.fixture
def builder(tmp_path: Path) -> EnvironmentBuilder:
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    for name in ("alpha", "beta", "gamma"):
        make_wheel(wheelhouse, name, "1.0")
    return EnvironmentBuilder(tmp_path / "envs", tmp_path / "uv-cache",
                              index_args=("--no-index", "--find-links", str(wheelhouse)))


def spec(*requirements: str) -> EnvironmentSpec:
    return EnvironmentSpec(default_python(), parse_requirements("\n".join(requirements)))


def imports(python: Path, module: str) -> str:
    return subprocess.run([str(python), "-c", f"import {module}; print({module}.VERSION)"],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_requirements_are_normalised() -> None:
    assert parse_requirements("Beta>=1.0  # comment\n\n# a line\nalpha\n") == ("alpha", "beta>=1.0")


@pytest.mark.parametrize(("text", "message"), [
    ("-r other.txt", "requirements.txt:1: options such as -r are not supported"),
    ("alpha\n==1.0", "requirements.txt:2: Expected package name"),
])
def test_bad_requirements_are_refused_with_the_line(text: str, message: str) -> None:
    with pytest.raises(EnvironmentBuildError, match=message):
        parse_requirements(text)


def test_same_inputs_share_one_environment(builder: EnvironmentBuilder) -> None:
    first = builder.ensure(spec("alpha", "beta"))
    assert imports(first.python, "alpha") == "1.0" and imports(first.python, "beta") == "1.0"
    assert first.record.base is None and first.record.installed == ["alpha==1.0", "beta==1.0"]
    again = builder.ensure(spec("BETA", "alpha"))
    assert again.path == first.path and again.record == first.record


def test_one_more_package_grows_from_the_closest_environment(builder: EnvironmentBuilder) -> None:
    small = builder.ensure(spec("alpha"))
    builder.ensure(spec("beta"))
    grown = builder.ensure(spec("alpha", "gamma"))
    assert grown.record.base == small.record.key
    assert grown.record.installed == ["gamma==1.0"]  # alpha came with the copy
    assert imports(grown.python, "alpha") == "1.0" and imports(grown.python, "gamma") == "1.0"
    assert imports(small.python, "alpha") == "1.0"  # the base is untouched
    with pytest.raises(subprocess.CalledProcessError):
        imports(small.python, "gamma")


def test_a_failed_build_leaves_nothing(builder: EnvironmentBuilder) -> None:
    builder.ensure(spec("alpha"))
    before = sorted(p.name for p in builder.root.iterdir())
    with pytest.raises(EnvironmentBuildError, match="installing no-such-package failed"):
        builder.ensure(spec("alpha", "no-such-package"))
    after = sorted(p.name for p in builder.root.iterdir())
    assert [name for name in after if name not in before] == [spec("alpha", "no-such-package").key + ".log"]
    assert "no-such-package" in (builder.root / f"{spec('alpha', 'no-such-package').key}.log").read_text()


def test_an_unknown_python_is_a_clear_error(builder: EnvironmentBuilder) -> None:
    with pytest.raises(EnvironmentBuildError, match="no Python 2.6 for a new environment"):
        builder.ensure(EnvironmentSpec("2.6", ("alpha",)))
