"""Running untrusted code — model servers and environment builds — in a bubblewrap (``bwrap``) sandbox.

A sandbox sees, read-only: the system directories, a minimal ``/etc`` (its own passwd, group,
hosts and nsswitch.conf; the host's certificates, ld.so.cache and time zone), the Python
installation and whatever the caller names (the platform's packages, an environment, a
bundle). It can write only to its ``/tmp`` and ``/dev/shm`` (size-limited tmpfs) and to the
paths the caller names writable (a build: the environment being built). It has its own user,
pid, IPC, mount, network and host-name namespaces, no capabilities, a session of its own (no
terminal to inject keystrokes into), and nothing of the registry's: not its data, not its
environment variables, not its loopback interface.

Unprivileged, for real. Inside, everything runs as uid/gid 65534 (nobody). When the registry runs
as root, that id is 65534 on the host too, not root: a user namespace that maps the sandbox's
user to host root (what ``bwrap --unshare-user --uid 65534`` does by itself when root starts it)
would leave the sandbox the owner of every root-owned file and, being root's user, exempt from
``RLIMIT_NPROC``. So the registry writes the namespace's id maps itself (``--userns-block-fd``):
in-namespace root (bwrap's own setup, which ends before the sandboxed command starts) is host
root, 65534 is 65534, and ``setpriv`` switches to 65534 before the command runs. A sandbox
cannot create user namespaces of its own (``max_user_namespaces`` is 0 inside), so it cannot
gain capabilities over new mounts either. When the registry is not root it is already
unprivileged: bwrap maps 65534 onto the registry's user, as usual.

Each sandbox is started by :mod:`sandbox_launcher` (``python -I -S sandbox_launcher.py …``),
which stays its parent: it writes the id maps, sets the process limit inside the new user
namespace (so that it counts this sandbox's processes, not all of root's or all of nobody's),
puts it in its own cgroup when there is one, gives it a network when asked, then lets the
command run and waits for it. ``--die-with-parent`` ties the sandbox to the launcher, not to
the registry, so workers outlive a registry restart (which adopts them), while killing the
launcher kills everything in the sandbox, even processes that left its session. A SIGTERM to
the launcher is passed on to the sandboxed command, for a graceful stop.

Network, when a sandbox has any, is its own: a network namespace wired to the outside by
``slirp4netns`` with ``--disable-host-loopback``, so it can reach the internet (or the package
index) but not the services listening on the host's 127.0.0.1 — the registry among them.

Limits: memory per process (``RLIMIT_AS``, which also counts shared mappings, and
``RLIMIT_DATA``), processes per sandbox (``RLIMIT_NPROC`` inside its user namespace), the size of
any file it writes (``RLIMIT_FSIZE``, also its log), ``/tmp`` and ``/dev/shm`` as tmpfs of a fixed
size (bwrap's ``--size``), and CPUs by affinity. With a delegated cgroup v2
(``MODELHALL_CGROUP``), each sandbox also gets ``memory.max`` and ``pids.max`` for all its
processes together, which covers what per-process limits cannot (memory of many processes,
memfd and System V segments that nothing maps).

Without bwrap, workers run unsandboxed; :func:`sandbox_warning` says so loudly.
"""

from __future__ import annotations

import os
import resource
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from modelhall.adapters.runtimes.sandbox_launcher import SANDBOX_UID

SYSTEM_DIRECTORIES = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64")
# The host's /etc files a sandbox may read: what Python, SSL, locale and ld.so need, and nothing that names
# the host's users, services or secrets. Its passwd, group, hosts and nsswitch.conf are its own (the launcher's).
HOST_ETC = ("/etc/ld.so.cache", "/etc/localtime", "/etc/ssl/certs", "/etc/ssl/openssl.cnf", "/etc/pki/tls/certs",
            "/etc/mime.types", "/etc/protocols", "/etc/services", "/etc/alternatives", "/etc/fonts", "/etc/os-release")
LAUNCHER = Path(__file__).resolve().with_name("sandbox_launcher.py")


@dataclass(frozen=True)
class Limits:
    """What one sandbox may use. ``disk`` is the size of its ``/tmp`` and the largest file it may write.

    ``address_space`` is off for GPU workers: the CUDA driver reserves far more address space than
    any memory limit, so ``RLIMIT_AS`` would stop it from starting; ``RLIMIT_DATA`` still holds.
    """

    memory: int
    cpus: float
    processes: int
    disk: int
    address_space: bool = True

    @property
    def shared_memory(self) -> int:
        """The size of ``/dev/shm`` (a tmpfs, so memory too): a quarter of the memory limit."""
        return max(self.memory // 4, 1024**2)


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


def _registry_is_root() -> bool:
    return os.geteuid() == 0


@cache
def cgroup_parent() -> Path | None:
    """The delegated cgroup v2 directory (``MODELHALL_CGROUP``) each sandbox gets a child of, if usable.

    Usable means: a cgroup v2 directory (it has ``cgroup.controllers``) with the memory and pids
    controllers enabled for its children (``cgroup.subtree_control``), writable by the registry.
    Such a directory cannot hold processes itself (cgroup v2 has no processes in inner nodes), so
    the registry cannot make one of its own cgroup: the operator delegates it (systemd's
    ``Delegate=yes``, a container runtime's cgroup namespace). Without one, limits are per process."""
    configured = os.environ.get("MODELHALL_CGROUP")
    if not configured:
        return None
    directory = Path(configured)
    try:
        enabled = (directory / "cgroup.subtree_control").read_text().split()
    except OSError:
        return None
    usable = (directory / "cgroup.controllers").exists() and {"memory", "pids"} <= set(enabled)
    return directory if usable and os.access(directory, os.W_OK) else None


def sandbox_warning() -> str | None:
    """What an operator must know at startup: no sandbox at all, or limits weaker than they could be."""
    if not bwrap_path():
        return ("WARNING: bubblewrap (bwrap) is not installed, so model code runs UNSANDBOXED, with this user's "
                "rights, network and files. Install it (apt-get install bubblewrap) before serving untrusted models.")
    notes = []
    if _registry_is_root() and not shutil.which("setpriv"):
        notes.append("setpriv (util-linux) is missing: sandboxes cannot drop to their unprivileged user, "
                     "so none starts")
    if not shutil.which("slirp4netns"):
        notes.append("slirp4netns is not installed: builds use the host's network and models that ask for network "
                     "are refused (apt-get install slirp4netns)")
    if cgroup_parent() is None:
        notes.append("no delegated cgroup v2 with memory and pids controllers (MODELHALL_CGROUP): memory and "
                     "process limits are per process (RLIMIT_AS, RLIMIT_NPROC, size-limited /tmp and /dev/shm)")
    return "Sandbox: " + "; ".join(notes) if notes else None


def platform_paths() -> list[Path]:
    """What the platform's Python needs to run a model server: its installation and its packages."""
    import modelhall
    from modelhall import adapters, registry, showcase, templates

    paths = {Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve()}
    # Package folders outside the prefix (a venv layered on another by a .pth file); never the
    # working directory or other sys.path entries, which may hold the registry's data.
    paths.update(Path(entry).resolve() for entry in sys.path
                 if Path(entry).name in ("site-packages", "dist-packages") and Path(entry).is_dir())
    paths.update(Path(package.__path__[0]).resolve() for package in (modelhall, adapters, registry, showcase, templates))
    return sorted(paths)


def gpu_devices(gpus: list[str]) -> list[str]:
    """The device files a worker needs for the NVIDIA GPUs it was given (none for none)."""
    if not gpus:
        return []
    shared = ["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"]
    return [d for d in [*shared, *(f"/dev/nvidia{gpu}" for gpu in gpus)] if os.path.exists(d)]


def bwrap_command(command: list[str], *, readable: list[Path], writable: list[Path], workdir: Path,
                  network: bool, limits: Limits, devices: tuple[str, ...] | list[str] = (),
                  scratch: Path | None = None) -> list[str]:
    """``command`` inside a sandbox, started through :mod:`sandbox_launcher`.

    Everything it sees is read-only except ``writable``, ``/dev/shm`` and ``/tmp``: a tmpfs of
    ``limits.disk`` bytes, or the host folder ``scratch`` (a build's download cache and temp
    files, too big for memory). ``network`` gives it its own network namespace wired out by
    slirp4netns (or, where slirp4netns is missing, the host's network: builds only)."""
    private_net = network and shutil.which("slirp4netns") is not None
    args = ["--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--hostname", "sandbox", "--new-session", "--die-with-parent", "--cap-drop", "ALL",
            "--dev", "/dev", "--proc", "/proc", "--perms", "1777", "--size", str(limits.shared_memory),
            "--tmpfs", "/dev/shm", "--setenv", "HOME", "/tmp", "--setenv", "TMPDIR", "/tmp"]
    if private_net or not network:
        args.append("--unshare-net")
    if scratch is None:
        args += ["--perms", "1777", "--size", str(limits.disk), "--tmpfs", "/tmp"]
    else:
        args += ["--bind", str(scratch), "/tmp"]
    if _registry_is_root():
        args += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]  # for setpriv, which drops them again
        command = [shutil.which("setpriv") or "setpriv", f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_UID}",
                   "--clear-groups", "--inh-caps=-all", "--", *command]
    else:
        args += ["--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--disable-userns"]
    for directory in SYSTEM_DIRECTORIES:
        if os.path.exists(directory):
            args += ["--ro-bind", directory, directory]
    made: set[Path] = set()
    for path in [*HOST_ETC, *(["/etc/resolv.conf"] if network and not private_net else [])]:
        if os.path.exists(path):
            args += [*_parent_dirs(Path(path), made), "--ro-bind", path, path]
    for path in readable:
        args += [*_parent_dirs(path, made), "--ro-bind", str(path), str(path)]
    for path in writable:
        args += [*_parent_dirs(path, made), "--bind", str(path), str(path)]
    for device in devices:
        args += ["--dev-bind", device, device]
    launcher = [sys.executable, "-I", "-S", str(LAUNCHER), f"--processes={limits.processes}"]
    if _registry_is_root():
        launcher.append("--map-ids")
    if private_net:
        launcher.append(f"--network={shutil.which('slirp4netns')}")
    if cgroup_parent() is not None:
        launcher.append(f"--cgroup={cgroup_parent()}:{limits.memory}")
    bwrap = [bwrap_path() or "bwrap", *args, "--remount-ro", "/", "--chdir", str(workdir), "--", *command]
    return [*launcher, "--", *bwrap]


def _parent_dirs(path: Path, made: set[Path]) -> list[str]:
    """``--dir`` for each folder above ``path`` not made yet: the folders bwrap makes by itself for a
    mount point are private to in-sandbox root (0700), which the sandbox's user could not pass."""
    args = []
    for parent in reversed(path.parents[:-1]):
        if parent not in made:
            made.add(parent)
            args += ["--dir", str(parent)]
    return args


def limits(budget: Limits) -> Callable[[], None]:
    """A ``preexec_fn`` for the per-process limits, inherited by everything the process starts:
    memory (``RLIMIT_DATA``, and ``RLIMIT_AS`` unless ``budget.address_space`` is off), the size of
    any file it writes, no core dumps, and as many CPUs as it asked for. The process limit is set
    by the launcher inside the sandbox's user namespace instead: set here, it would count all of
    this user's processes on the host."""

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_DATA, (budget.memory, budget.memory))
        if budget.address_space:
            resource.setrlimit(resource.RLIMIT_AS, (budget.memory, budget.memory))
        resource.setrlimit(resource.RLIMIT_FSIZE, (budget.disk, budget.disk))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        available = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, available[: max(1, int(budget.cpus))])

    return apply
