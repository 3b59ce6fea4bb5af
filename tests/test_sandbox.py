"""Hostile bundles against the sandbox: each test is an attack on the host, on other models or on the registry
that must fail — with the sandbox on and, in CI, the registry running as root.

A model tries to remount its read-only files writable, plant a ``.pth`` in the environment it shares with
other models, fork past its process limit, fill its ``/tmp`` and its shared memory, read the host's secrets,
reach the registry on the host's loopback, run past its time limit; a bundle tries to make the build read,
quote or run what lies outside it. The registry keeps serving everyone else throughout.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import RegistryServer, serve_registry, unavailable
from modelhall.adapters.runtimes.base import Target
from modelhall.adapters.runtimes.environments import EnvironmentBuildError
from modelhall.adapters.runtimes.local import LocalRuntime
from modelhall.adapters.runtimes.sandbox import bwrap_path, cgroup_parent, sandbox_warning
from modelhall.adapters.runtimes.sandbox_launcher import join_cgroup
from modelhall.spec import SpecError
from oci_helpers import http
from test_runtime import predict, push, quick_hello, runtime_registry, status, wait_for  # noqa: F401 - a fixture

MEMORY = 1024**3
DISK = 64 * 1024**2
PROCESSES = 64


@pytest.fixture(autouse=True)
def _needs_bubblewrap() -> None:
    if bwrap_path() is None:
        unavailable("bubblewrap is not installed: apt-get install bubblewrap")


def hostile_bundle(tmp_path: Path, name: str, model: str, runtime: str = "", spec: str = "") -> Path:
    """A python-adapter bundle whose ``predict(targets)`` returns a JSON report; ``runtime`` adds to its runtime
    section (``", network: true"``), ``spec`` adds sections."""
    bundle = tmp_path / name
    bundle.mkdir()
    (bundle / "predict.py").write_text(model)
    (bundle / "modelhall.yaml").write_text(
        f"name: {name}\nruntime: {{adapter: python, entrypoint: predict.py:predict{runtime}}}\n"
        "inputs: [{name: targets, type: json}]\noutputs: [{name: report, type: json}]\n"
        "scaling: {min: 0, max: 1, idle_timeout: 300}\n" + spec)
    return bundle


def run_report(registry: RegistryServer, repository: str, targets: dict | None = None) -> dict:
    response = http(registry.url).post(f"/api/v1/repos/{repository}/predict",
                                       json={"inputs": {"targets": targets or {}}}, timeout=180)
    assert response.status_code == 200, response.text
    return response.json()["outputs"]["report"]


ESCAPE_ARTIST = '''
import ctypes, mmap, os, socket, subprocess, sys, time

MS_REMOUNT, MS_BIND = 32, 4096


def attempt(action):
    try:
        return f"allowed: {action()}"
    except Exception as error:
        return f"blocked: {type(error).__name__}"


def remount_with_mount_command(path):
    done = subprocess.run(["mount", "-o", "remount,bind,rw", path, path], capture_output=True)
    if done.returncode:
        raise PermissionError(done.stderr.decode()[-80:])
    return "remounted"


def remount_with_ctypes(path):
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(None, path.encode(), None, MS_REMOUNT | MS_BIND, None) != 0:
        raise OSError(ctypes.get_errno(), "mount")
    return "remounted"


def new_user_namespace():
    done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True)
    if done.returncode:
        raise PermissionError(done.stderr.decode()[-80:])
    return "unshared"


def plant_pth():
    site = next(path for path in sys.path if path.endswith("site-packages") and path.startswith(sys.prefix))
    with open(os.path.join(site, "zz-planted.pth"), "w") as out:
        out.write("import os; os.environ['PLANTED'] = 'yes'\\n")
    return site


def fork_bomb():
    children = []
    try:
        for _ in range(1000):
            pid = os.fork()
            if pid == 0:
                time.sleep(3)
                os._exit(0)
            children.append(pid)
        return f"forked {len(children)}"
    finally:
        for pid in children:
            os.kill(pid, 9)
            os.waitpid(pid, 0)


def fill(folder, size):
    """Files of 8 MiB until ``size``: each below the largest file allowed, so only the folder's own limit stops it."""
    files = []
    try:
        while len(files) * 8 < size // 2**20:
            files.append(os.path.join(folder, f"filler-{len(files)}"))
            with open(files[-1], "wb") as out:
                for _ in range(8):
                    out.write(b"x" * 2**20)
        return f"wrote {size}"
    finally:
        for path in files:
            if os.path.exists(path):
                os.unlink(path)


def shared_mapping(size):
    area = mmap.mmap(-1, size, flags=mmap.MAP_SHARED)
    area.close()
    return f"mapped {size}"


def connect(port):
    with socket.create_connection(("127.0.0.1", port), timeout=3):
        return "connected"


def predict(targets):
    memory, disk = targets["memory"], targets["disk"]
    status = open("/proc/self/status").read()
    return {
        "uid": os.getuid(),
        "capabilities": [line.split()[1] for line in status.splitlines() if line.startswith("CapEff")][0],
        "etc": sorted(os.listdir("/etc")),
        "remount_bundle": attempt(lambda: remount_with_mount_command(os.getcwd())),
        "remount_environment": attempt(lambda: remount_with_ctypes(sys.prefix)),
        "user_namespace": attempt(new_user_namespace),
        "plant_pth": attempt(plant_pth),
        "fork_bomb": attempt(fork_bomb),
        "fill_tmp": attempt(lambda: fill("/tmp", 2 * disk)),
        "fill_shm": attempt(lambda: fill("/dev/shm", memory)),
        "map_shared": attempt(lambda: shared_mapping(2 * memory)),
        "shadow": attempt(lambda: open("/etc/shadow").read()),
        "registry": attempt(lambda: connect(targets["port"])),
        "planted_before": os.environ.get("PLANTED"),
    }
'''


def test_a_hostile_model_stays_unprivileged_and_within_its_limits(runtime_registry: RegistryServer,
                                                                   tmp_path: Path) -> None:
    """Remount, plant a .pth in the shared environment, fork-bomb, fill /tmp and /dev/shm, map shared memory
    past the limit, read /etc/shadow, call the registry: all refused; the model and its neighbours keep serving."""
    user, _, _ = push(runtime_registry, quick_hello(tmp_path / "innocent", idle_timeout=300), "innocent")
    assert predict(runtime_registry, f"{user}/innocent", "before").status_code == 200
    spec = f"resources: {{cpu: 1, memory: {MEMORY}, disk: {DISK}, processes: {PROCESSES}}}\n"
    owner, _, _ = push(runtime_registry, hostile_bundle(tmp_path, "escape-artist", ESCAPE_ARTIST, spec=spec),
                       "escape-artist")
    targets = {"memory": MEMORY, "disk": DISK, "port": runtime_registry.port}
    report = run_report(runtime_registry, f"{owner}/escape-artist", targets)
    assert (report.pop("uid"), report.pop("capabilities"), report.pop("planted_before")) == (65534, "0" * 16, None)
    assert "shadow" not in report["etc"] and "passwd" in report["etc"] and "resolv.conf" not in report.pop("etc")
    assert {name: outcome for name, outcome in report.items() if not outcome.startswith("blocked")} == {}
    again = run_report(runtime_registry, f"{owner}/escape-artist", targets)  # the same worker, still serving
    assert again["planted_before"] is None and again["fork_bomb"].startswith("blocked")
    assert predict(runtime_registry, f"{user}/innocent", "after").json()["outputs"] == {"greeting": "Hello, after."}
    environments = runtime_registry.data_dir / "environments"
    assert not list(environments.glob("*/lib/python*/site-packages/zz-planted.pth"))


NETWORKED = '''
import socket


def attempt(action):
    try:
        return f"allowed: {action()}"
    except Exception as error:
        return f"blocked: {type(error).__name__}"


def connect(host, port):
    with socket.create_connection((host, port), timeout=3):
        return "connected"


def predict(targets):
    interfaces = sorted(name for _, name in socket.if_nameindex())
    return {"interfaces": interfaces, "resolv": open("/etc/resolv.conf").read().split(),
            "loopback": attempt(lambda: connect("127.0.0.1", targets["port"])),
            "host_alias": attempt(lambda: connect("10.0.2.2", targets["port"]))}
'''


def test_network_needs_the_operators_consent(runtime_registry: RegistryServer, tmp_path: Path) -> None:
    owner, _, _ = push(runtime_registry, hostile_bundle(tmp_path, "online", NETWORKED, ", network: true"), "online")
    refused = http(runtime_registry.url).post(f"/api/v1/repos/{owner}/online/predict",
                                              json={"inputs": {"targets": {}}}, timeout=60)
    assert (refused.status_code, refused.json()["status"]) == (503, "unschedulable")
    assert refused.json()["detail"] == ("the model asks for network access (runtime.network: true), which this "
                                        "registry does not allow (its operator can, with "
                                        "MODELHALL_ALLOW_MODEL_NETWORK=true)")
    assert status(runtime_registry, f"{owner}/online")["state"] == "unschedulable"


@pytest.fixture
def networked_registry(database_kind: str, tmp_path: Path) -> Iterator[RegistryServer]:
    if shutil.which("slirp4netns") is None:
        unavailable("slirp4netns is not installed: apt-get install slirp4netns")
    yield from serve_registry(database_kind, tmp_path / "registry", {"MODELHALL_ALLOW_MODEL_NETWORK": "true"})


def test_a_model_with_network_has_its_own_not_the_hosts_loopback(networked_registry: RegistryServer,
                                                                  tmp_path: Path) -> None:
    """Allowed network is a namespace of its own behind slirp4netns: the registry on 127.0.0.1 is out of reach."""
    owner, _, _ = push(networked_registry, hostile_bundle(tmp_path, "online", NETWORKED, ", network: true"), "online")
    report = run_report(networked_registry, f"{owner}/online", {"port": networked_registry.port})
    assert report["interfaces"] == ["lo", "tap0"] and report["resolv"] == ["nameserver", "10.0.2.3"]
    assert report["loopback"].startswith("blocked") and report["host_alias"].startswith("blocked")


SLOW = '''
import time


def predict(targets):
    time.sleep(targets.get("sleep", 0))
    return {"slept": targets.get("sleep", 0)}
'''


def test_a_prediction_past_its_time_limit_fails_and_the_worker_keeps_serving(runtime_registry: RegistryServer,
                                                                           tmp_path: Path) -> None:
    owner, _, _ = push(runtime_registry, hostile_bundle(tmp_path, "slow", SLOW, ", timeout: 1"), "slow")
    assert run_report(runtime_registry, f"{owner}/slow") == {"slept": 0}  # awake
    [worker] = status(runtime_registry, f"{owner}/slow")["workers"]
    late = http(runtime_registry.url).post(f"/api/v1/repos/{owner}/slow/predict",
                                           json={"inputs": {"targets": {"sleep": 30}}}, timeout=60)
    assert late.status_code == 500
    assert late.json()["error"]["message"] == ("the model failed: the prediction took longer than 1 s "
                                               "(runtime.timeout) and was abandoned")
    assert run_report(runtime_registry, f"{owner}/slow") == {"slept": 0}
    assert [w["id"] for w in status(runtime_registry, f"{owner}/slow")["workers"]] == [worker["id"]]


# --- builds: what a bundle names must not make the registry read, quote or run anything outside it ----------


def bundle_with(tmp_path: Path, package: str, files: dict[str, str] | None = None) -> Path:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "predict.py").write_text("def predict(name):\n    return name\n")
    (bundle / "modelhall.yaml").write_text("name: reader\nruntime: {adapter: python, entrypoint: predict.py:predict}\n"
                                           f"package: {package}\n")
    for name, content in (files or {}).items():
        (bundle / name).write_text(content)
    return bundle

TARGET = Target(1, "test/model", "sha256:" + "0" * 64)


@pytest.fixture
def runtime(tmp_path: Path) -> LocalRuntime:
    """A local runtime with a registry's data dir beside it, holding a key worth stealing."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "secret.key").write_text("registry-signing-key")
    return LocalRuntime(data_dir, index_args=("--no-index",))


@pytest.mark.parametrize("requirements", ["/proc/self/environ", "../../secret.key", "../data/secret.key"])
def test_a_requirements_file_outside_the_bundle_is_refused_by_name(runtime: LocalRuntime, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   requirements: str) -> None:
    monkeypatch.setenv("MODELHALL_SECRET_KEY", "registry-signing-key")
    with pytest.raises(SpecError) as refused:
        runtime.build(bundle_with(tmp_path, f"{{requirements_file: {requirements}}}"), TARGET)
    assert str(refused.value).startswith("modelhall.yaml:3: package.requirements_file: ")
    assert "registry-signing-key" not in str(refused.value)


def test_a_link_out_of_the_bundle_is_refused_by_name(runtime: LocalRuntime, tmp_path: Path) -> None:
    bundle = bundle_with(tmp_path, "{requirements_file: requirements.txt}")
    (bundle / "requirements.txt").symlink_to(runtime.data_dir / "secret.key")
    with pytest.raises(SpecError) as refused:
        runtime.build(bundle, TARGET)
    assert str(refused.value) == ("modelhall.yaml:3: package.requirements_file: leads outside the bundle through a "
                                  "symbolic link; name a file in it")


@pytest.mark.parametrize("python", ["./interpreter.sh", "/bin/sh", "python3; rm -rf /", "3.11 --foo"])
def test_package_python_is_a_version_never_a_file(runtime: LocalRuntime, tmp_path: Path, python: str) -> None:
    bundle = bundle_with(tmp_path, f"{{python: '{python}'}}", {"interpreter.sh": "#!/bin/sh\ntouch /tmp/ran\n"})
    with pytest.raises(SpecError, match=r"modelhall.yaml:3: package.python: .* is not a Python version such as 3.11"):
        runtime.build(bundle, TARGET)


@pytest.mark.parametrize("line", ["./evil", "evil @ file:///{bundle}/evil", "-e ./evil", "evil/"])
def test_a_local_package_is_refused_before_its_build_backend_runs(runtime: LocalRuntime, tmp_path: Path,
                                                                  line: str) -> None:
    """A local sdist's setup.py would run on the build's machine: refused up front, with the file and line."""
    marker = tmp_path / "setup-py-ran"
    bundle = bundle_with(tmp_path, "{requirements_file: requirements.txt}")
    (bundle / "evil").mkdir()
    (bundle / "evil" / "setup.py").write_text(
        f"open({str(marker)!r}, 'w').write(open({str(runtime.data_dir / 'secret.key')!r}).read())\n"
        "from setuptools import setup\nsetup(name='evil')\n")
    (bundle / "requirements.txt").write_text("numpy-not-needed-here ; python_version < '3'\n"
                                             + line.format(bundle=bundle) + "\n")
    with pytest.raises(EnvironmentBuildError, match=r"^requirements.txt:2: (a local file|options|a direct reference)"):
        runtime.build(bundle, TARGET)
    assert not marker.exists()


# --- what the limits rest on ---------------------------------------------------------------------------------


@pytest.fixture
def delegated_cgroup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A stand-in for a delegated cgroup v2 directory (this machine has no cgroup2 with a memory controller)."""
    directory = tmp_path / "cgroup"
    directory.mkdir()
    (directory / "cgroup.controllers").write_text("cpu io memory pids\n")
    (directory / "cgroup.subtree_control").write_text("memory pids\n")
    monkeypatch.setenv("MODELHALL_CGROUP", str(directory))
    cgroup_parent.cache_clear()
    yield directory
    cgroup_parent.cache_clear()


def test_without_a_delegated_cgroup_the_operator_hears_limits_are_per_process(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELHALL_CGROUP", raising=False)
    cgroup_parent.cache_clear()
    assert cgroup_parent() is None
    assert "memory and process limits are per process" in (sandbox_warning() or "")


def test_a_delegated_cgroup_is_used_only_with_memory_and_pids_enabled(delegated_cgroup: Path) -> None:
    assert cgroup_parent() == delegated_cgroup
    assert "MODELHALL_CGROUP" not in (sandbox_warning() or "")
    (delegated_cgroup / "cgroup.subtree_control").write_text("cpu\n")
    cgroup_parent.cache_clear()
    assert cgroup_parent() is None


def test_each_sandbox_gets_a_cgroup_of_its_own_with_its_limits(delegated_cgroup: Path) -> None:
    remove = join_cgroup(str(delegated_cgroup), 4242, memory=MEMORY, processes=PROCESSES)
    group = delegated_cgroup / "sandbox-4242"
    assert {name: (group / name).read_text() for name in ("memory.max", "memory.swap.max", "pids.max",
                                                          "cgroup.procs")} == {
        "memory.max": str(MEMORY), "memory.swap.max": "0", "pids.max": str(PROCESSES), "cgroup.procs": "4242"}
    for control in group.iterdir():  # a real cgroup's control files go with it; the stand-in's must go first
        control.unlink()
    remove()
    assert not group.exists()


def processes_mentioning(token: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and token.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            pass
    return found


def test_a_models_processes_end_with_its_worker_even_those_that_left_its_session(tmp_path: Path) -> None:
    """A model that starts a daemon in a session of its own (out of reach of the worker's process group) still
    loses it when its worker stops: the whole sandbox goes."""
    token = f"daemon-{uuid.uuid4().hex}"
    bundle = quick_hello(tmp_path, model=f"import subprocess, sys\n\nsubprocess.Popen([sys.executable, '-c', "
                                          f"'import time; time.sleep(1000)  # {token}'], start_new_session=True)\n\n"
                                          "def predict(name, style='plain'):\n    return name\n")
    runtime = LocalRuntime(tmp_path / "data")
    worker = runtime.start(bundle, runtime.build(bundle, TARGET), TARGET, "/live/test")
    with httpx.Client(transport=httpx.HTTPTransport(uds=worker.unix_socket), base_url="http://worker") as client:
        assert client.get("/healthz", params={"wait": 60}, timeout=90).status_code == 200
    wait_for(lambda: processes_mentioning(token), "the daemon starting")
    sockets = Path(worker.unix_socket).parent
    runtime.stop(worker)
    wait_for(lambda: not processes_mentioning(token), "the daemon ending with its worker", seconds=10)
    assert not sockets.exists()  # the last worker's socket takes its folder in /tmp with it
