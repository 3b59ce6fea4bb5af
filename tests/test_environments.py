"""Environment builds with uv: keyed by their inputs, grown from the closest one, failures leave nothing."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import zipfile
from pathlib import Path

import pytest
from conftest import unavailable

from modelhall.adapters.runtimes.environments import (
    EnvironmentBuildError,
    EnvironmentBuilder,
    EnvironmentSpec,
    default_python,
    parse_requirements,
)
from modelhall.adapters.runtimes.sandbox import bwrap_path


def make_wheel(wheelhouse: Path, name: str, version: str, extra: dict[str, str] | None = None,
               requires: tuple[str, ...] = ()) -> None:
    """A minimal pure-Python wheel, so the tests need no package index; ``extra`` files go beside its
    package, ``requires`` are its dependencies."""
    dist = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(wheelhouse / f"{name}-{version}-py3-none-any.whl", "w") as wheel:
        wheel.writestr(f"{name}/__init__.py", f"VERSION = {version!r}\n")
        for path, content in (extra or {}).items():
            wheel.writestr(path, content)
        wheel.writestr(f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                                           + "".join(f"Requires-Dist: {requirement}\n" for requirement in requires))
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
    ("alpha\n==1.0", r"requirements.txt:2: not a valid requirement \(Expected package name at the start of "
                     r"dependency specifier, at column 1\)"),
])
def test_bad_requirements_are_refused_with_the_line(text: str, message: str) -> None:
    with pytest.raises(EnvironmentBuildError, match=message):
        parse_requirements(text)


@pytest.mark.parametrize("line", ["SECRETVALUE==", "SECRETVALUE[", "SECRETVALUE ; os_name ==", "SECRETVALUE>=1.0abc!",
                                  "SECRETVALUE @", "--SECRETVALUE", "-SECRETVALUE x", "SECRETVALUE @ ssh://h/x"])
def test_an_error_names_the_line_and_never_quotes_it(line: str) -> None:
    """What the file holds never comes back in an error: it could be a file the author should not read."""
    with pytest.raises(EnvironmentBuildError) as refused:
        parse_requirements(f"alpha\n{line}\n", "reqs.txt")
    assert str(refused.value).startswith("reqs.txt:2: ") and "SECRETVALUE" not in str(refused.value)


@pytest.mark.parametrize("line", ["./local", "../x", "/srv/pkg", "~/pkg", "dist/pkg-1.0-py3-none-any.whl",
                                  "pkg-1.0.tar.gz", "pkg @ file:///srv/pkg", "pkg @ file:../x", "pkg@/srv/pkg.whl",
                                  "-e .", "--editable=./x", "pkg @ git+ssh://host/pkg", "file:pkg"])
def test_local_files_and_other_direct_references_are_refused(line: str) -> None:
    """A local path or sdist would run its build backend from a place the author picked."""
    with pytest.raises(EnvironmentBuildError, match=r"^requirements.txt:1: (a local file|a direct reference|options)"):
        parse_requirements(line)


def test_https_direct_references_are_kept() -> None:
    assert parse_requirements("Pkg @ https://example.com/pkg-1.0-py3-none-any.whl") == (
        "pkg @ https://example.com/pkg-1.0-py3-none-any.whl",)


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


HOSTILE_BACKEND = '''
"""A build backend that tries what a hostile package's build could, and ships its findings in the wheel."""
import base64, hashlib, io, json, os, socket, zipfile

TARGETS = {targets!r}


def attempt(action):
    try:
        return f"allowed: {{action()}}"
    except Exception as error:
        return f"blocked: {{type(error).__name__}}"


def write(path):
    with open(path, "w") as out:
        out.write("planted")
    return path


def connect():
    with socket.create_connection(("127.0.0.1", TARGETS["port"]), timeout=3):
        return "connected"


def plant_in_the_environment_being_built():
    [building] = os.listdir(TARGETS["root"])  # the only folder of the registry's the build sees
    prefix = os.path.join(TARGETS["root"], building)
    os.mkfifo(os.path.join(prefix, "fifo"))
    os.chmod(write(os.path.join(prefix, "setuid-me")), 0o6777)
    return building


def get_requires_for_build_wheel(config_settings=None):
    return []


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    report = {{
        "uid": os.getuid(),
        "home": os.environ.get("HOME"),
        "settings": sorted(name for name in os.environ if name.startswith("MODELHALL_")),
        "secret_key": attempt(lambda: open(TARGETS["secret"]).read()),
        "data_dir": attempt(lambda: sorted(os.listdir(TARGETS["data_dir"]))),
        "shadow": attempt(lambda: open("/etc/shadow").read()),
        "registry_port": attempt(connect),
        "write_other_environment": attempt(lambda: write(TARGETS["other_environment"])),
        "write_environments_root": attempt(lambda: write(os.path.join(TARGETS["root"], "planted.txt"))),
        "plant": plant_in_the_environment_being_built(),
    }}
    files = {{"probe/__init__.py": "VERSION = '1.0'\\n", "probe/report.json": json.dumps(report),
             "probe-1.0.dist-info/METADATA": "Metadata-Version: 2.1\\nName: probe\\nVersion: 1.0\\n",
             "probe-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\\nGenerator: hostile\\nRoot-Is-Purelib: true\\n"
                                          "Tag: py3-none-any\\n"}}
    def digest(data):
        return base64.urlsafe_b64encode(hashlib.sha256(data.encode()).digest()).rstrip(b"=").decode()

    record = "".join(f"{{name}},sha256={{digest(data)}},{{len(data)}}\\n" for name, data in files.items())
    record += "probe-1.0.dist-info/RECORD,,\\n"
    name = "probe-1.0-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as wheel:
        for path, data in {{**files, "probe-1.0.dist-info/RECORD": record}}.items():
            wheel.writestr(path, data)
    return name
'''


def make_sdist(wheelhouse: Path, backend: str) -> None:
    """``probe-1.0.tar.gz``: a source package whose in-tree build backend is ``backend`` (no setuptools needed)."""
    import io
    import tarfile

    files = {"pyproject.toml": '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n'
                               '[project]\nname = "probe"\nversion = "1.0"\n',
             "PKG-INFO": "Metadata-Version: 2.1\nName: probe\nVersion: 1.0\n", "backend.py": backend}
    with tarfile.open(wheelhouse / "probe-1.0.tar.gz", "w:gz") as sdist:
        for name, content in files.items():
            info = tarfile.TarInfo(f"probe-1.0/{name}")
            info.size = len(content.encode())
            sdist.addfile(info, io.BytesIO(content.encode()))


def test_a_build_is_sandboxed_and_sees_nothing_of_the_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The build backend of a source package from the index is the author's code: it runs unprivileged, without
    the registry's settings, data, loopback or other environments, and what it leaves behind is sealed."""
    if bwrap_path() is None:
        unavailable("bubblewrap is not installed: apt-get install bubblewrap")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "secret.key").write_text("registry-signing-key")
    monkeypatch.setenv("MODELHALL_SECRET_KEY", "registry-signing-key")
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    make_wheel(wheelhouse, "alpha", "1.0")
    builder = EnvironmentBuilder(data_dir / "environments", data_dir / "uv-cache",
                                 index_args=("--no-index", "--find-links", str(wheelhouse)))
    other = builder.ensure(spec("alpha"))  # someone else's environment, already built
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        targets = {"port": listener.getsockname()[1], "secret": str(data_dir / "secret.key"),
                   "data_dir": str(data_dir), "other_environment": str(other.path / "planted.txt"),
                   "root": str(builder.root)}
        make_sdist(wheelhouse, HOSTILE_BACKEND.format(targets=targets))
        built = builder.ensure(spec("probe"))
    [report_file] = built.path.glob("lib/python*/site-packages/probe/report.json")
    report = json.loads(report_file.read_text())
    assert report.pop("plant").startswith(".") and report.pop("home") == "/tmp" and report.pop("settings") == []
    assert report.pop("uid") == 65534
    assert report.pop("data_dir") == "allowed: ['environments']"  # only the way to the environment being built
    assert {name: outcome for name, outcome in report.items() if not outcome.startswith("blocked")} == {}
    assert not (other.path / "planted.txt").exists() and not (builder.root / "planted.txt").exists()
    for item in [built.path, *built.path.rglob("*")]:  # sealed: root's, read-only to others, files and folders only
        mode = item.lstat().st_mode
        assert stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode), item
        if not stat.S_ISLNK(mode):
            assert mode & 0o7022 == 0, (item, oct(mode))
        if os.geteuid() == 0:
            assert item.lstat().st_uid == 0, item
    assert not (built.path / "fifo").exists() and (built.path / "setuid-me").exists()
