"""Running untrusted model code: bubblewrap (``bwrap``) when the machine has it.

A sandboxed worker sees, read-only: the system directories, the Python installation,
the platform's own packages, its environment and its bundle. It can write only to a
private temp dir, and to the folder holding its Unix socket. It has no network unless
its spec says ``network: true``, no view of the registry's data or of other bundles,
and its own pid, IPC and host-name namespaces. Memory and CPUs are limited in the
process itself (``RLIMIT_DATA`` and CPU affinity), which needs no cgroups.

Without bwrap, workers run unsandboxed; :func:`sandbox_warning` says so loudly.
"""

from __future__ import annotations

import os
import resource
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

SYSTEM_DIRECTORIES = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/etc")


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


def sandbox_warning() -> str | None:
    if bwrap_path():
        return None
    return ("WARNING: bubblewrap (bwrap) is not installed, so model code runs UNSANDBOXED, with this user's "
            "rights, network and files. Install it (apt-get install bubblewrap) before serving untrusted models.")


def platform_paths() -> list[Path]:
    """What the platform's Python needs to run a model server: its installation and its packages."""
    import modelhall
    from modelhall import adapters, registry, showcase, templates

    paths = {Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve()}
    paths.update(Path(package.__path__[0]).resolve() for package in (modelhall, adapters, registry, showcase, templates))
    return sorted(paths)


def gpu_devices(gpus: list[str]) -> list[str]:
    """The device files a worker needs for the NVIDIA GPUs it was given (none for none)."""
    if not gpus:
        return []
    shared = ["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"]
    return [d for d in [*shared, *(f"/dev/nvidia{gpu}" for gpu in gpus)] if os.path.exists(d)]


def bwrap_command(command: list[str], *, readable: list[Path], private_tmp: Path, writable: list[Path],
                  workdir: Path, network: bool, devices: tuple[str, ...] | list[str] = ()) -> list[str]:
    """``command`` inside a sandbox whose only writable places are ``private_tmp`` (seen as /tmp)
    and ``writable``; everything else it sees is read-only, including the root itself."""
    wrapped = [bwrap_path() or "bwrap", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
               "--dev", "/dev", "--proc", "/proc", "--bind", str(private_tmp), "/tmp",
               "--setenv", "HOME", "/tmp", "--setenv", "TMPDIR", "/tmp"]
    if not network:
        wrapped.append("--unshare-net")
    for directory in SYSTEM_DIRECTORIES:
        if os.path.exists(directory):
            wrapped += ["--ro-bind", directory, directory]
    for path in readable:
        wrapped += ["--ro-bind", str(path), str(path)]
    for path in writable:
        wrapped += ["--bind", str(path), str(path)]
    for device in devices:
        wrapped += ["--dev-bind", device, device]
    return [*wrapped, "--remount-ro", "/", "--chdir", str(workdir), *command]


def limits(memory_bytes: int, cpus: float) -> Callable[[], None]:
    """A ``preexec_fn`` that caps the worker's data memory and pins it to as many CPUs as it asked for."""

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_DATA, (memory_bytes, memory_bytes))
        available = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, available[: max(1, int(cpus))])

    return apply
