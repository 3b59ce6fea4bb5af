"""The parent of every sandbox: ``python -I -S sandbox_launcher.py [OPTIONS] -- bwrap ARGS…`` (see :mod:`sandbox`).

It starts bwrap and, while bwrap waits (``--userns-block-fd``, ``--block-fd``), prepares the
sandbox from outside: the user namespace's id maps and its ban on further user namespaces,
the process limit inside that namespace, a cgroup, a network, a minimal ``/etc``. Then it lets
the command run and waits for it, passing a SIGTERM on to it. bwrap runs with
``--die-with-parent``, so when this process dies, however it dies, the whole sandbox dies too.

It runs for every worker start, so it imports only what it needs from the standard library
(no ``json``, ``pathlib``, ``subprocess``): its start-up is part of every cold start.

Options: ``--map-ids`` (the registry is root: map the sandbox's user onto the unprivileged host
user of the same id), ``--processes=N``, ``--network=PATH-OF-SLIRP4NETNS``,
``--cgroup=DIRECTORY:MEMORY-BYTES``.
"""

from __future__ import annotations

import os
import resource
import select
import signal
import sys
import time

SANDBOX_UID = 65534  # nobody/nogroup
SLIRP_DNS = "10.0.2.3"  # slirp4netns's built-in DNS forwarder
START_SECONDS = 10.0  # how long to wait for bwrap and slirp4netns to get ready
CLONE_NEWUSER = 0x10000000
ETC_FILES = {
    "/etc/passwd": "root:x:0:0:root:/:/usr/sbin/nologin\n"
                   f"nobody:x:{SANDBOX_UID}:{SANDBOX_UID}:nobody:/tmp:/usr/sbin/nologin\n",
    "/etc/group": f"root:x:0:\nnogroup:x:{SANDBOX_UID}:\n",
    "/etc/hosts": "127.0.0.1 localhost\n::1 localhost\n",
    "/etc/nsswitch.conf": "passwd: files\ngroup: files\nhosts: files dns\n",
}


class SandboxStartError(RuntimeError):
    pass


def launch(options: dict[str, str], bwrap: list[str]) -> int:
    """Start bwrap, prepare its namespaces, let the command run; its exit code (125: no sandbox)."""
    info_r, info_w = os.pipe()
    ready_r, ready_w = os.pipe()
    setup = ["--info-fd", str(info_w), "--block-fd", str(ready_r), "--dir", "/etc"]
    inherited = [info_w, ready_r]
    userns_w = None
    if "map-ids" in options:
        userns_r, userns_w = os.pipe()
        setup += ["--userns-block-fd", str(userns_r)]
        inherited.append(userns_r)
    files = dict(ETC_FILES)
    if "network" in options:
        files["/etc/resolv.conf"] = f"nameserver {SLIRP_DNS}\n"
    for destination, content in files.items():
        data_r, data_w = os.pipe()
        os.write(data_w, content.encode())
        os.close(data_w)
        setup += ["--perms", "0644", "--ro-bind-data", str(data_r), destination]
        inherited.append(data_r)
    for fd in inherited:
        os.set_inheritable(fd, True)
    # bwrap gets a process group of its own: a SIGTERM for the sandbox reaches us alone and we pass it
    # on to the command, which may finish what it was doing; bwrap would die of it and kill the command.
    bwrap_pid = os.posix_spawn(bwrap[0], [bwrap[0], *setup, *bwrap[1:]], os.environ, setpgroup=0)
    keep = {info_r, ready_w, userns_w}
    for fd in [int(name) for name in os.listdir("/proc/self/fd")]:
        if fd > 2 and fd not in keep:  # what the sandbox inherits (its socket) is no business of ours
            try:
                os.close(fd)
            except OSError:
                pass  # the listing's own descriptor
    cleanup = []
    try:
        pid = child_pid(info_r)
        if userns_w is not None:
            map_ids(pid)
            forbid_user_namespaces(pid)
            os.write(userns_w, b"1")
            os.close(userns_w)
        processes = int(options["processes"])
        resource.prlimit(pid, resource.RLIMIT_NPROC, (processes, processes))
        if "cgroup" in options:
            directory, _, memory = options["cgroup"].rpartition(":")
            cleanup.append(join_cgroup(directory, pid, int(memory), processes))
        if "network" in options:
            cleanup.append(wire_network(options["network"], pid, rootless=userns_w is None))
        pass_on_sigterm(pid)
        os.write(ready_w, b"1")
        os.close(ready_w)
        code = os.waitstatus_to_exitcode(os.waitpid(bwrap_pid, 0)[1])
        return 128 - code if code < 0 else code
    except (OSError, SandboxStartError, ValueError) as error:
        print(f"sandbox: {error}", file=sys.stderr, flush=True)
        os.kill(bwrap_pid, signal.SIGKILL)
        os.waitpid(bwrap_pid, 0)
        return 125
    finally:
        for step in reversed(cleanup):
            step()


def child_pid(info: int) -> int:
    """The sandbox's first process (its pid 1), from bwrap's info descriptor: ``{"child-pid": N, …}``."""
    data = b""
    deadline = time.monotonic() + START_SECONDS
    while b"}" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([info], [], [], remaining)[0]:
            raise SandboxStartError("bwrap did not start in time")
        chunk = os.read(info, 4096)
        if not chunk:
            raise SandboxStartError("bwrap exited before the sandbox started")
        data += chunk
    os.close(info)
    number = data.split(b'"child-pid":', 1)[1].split(b",")[0].split(b"}")[0]
    return int(number)


def map_ids(pid: int) -> None:
    """In-namespace root (bwrap's own setup) is host root; the sandbox's user is the unprivileged host
    user of the same id. bwrap alone would map the sandbox's user onto host root."""
    mapping = f"0 0 1\n{SANDBOX_UID} {SANDBOX_UID} 1\n"
    for name in ("uid_map", "gid_map"):
        with open(f"/proc/{pid}/{name}", "w") as out:
            out.write(mapping)


def forbid_user_namespaces(pid: int) -> None:
    """``max_user_namespaces`` = 0 in the sandbox's user namespace, written by a child that joins it:
    ``bwrap --disable-userns`` does the same, but bwrap refuses it beside ``--userns-block-fd``."""
    child = os.fork()
    if child == 0:
        code = 1
        try:
            import ctypes

            namespace = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY)
            if ctypes.CDLL(None).setns(namespace, CLONE_NEWUSER) == 0:
                with open("/proc/sys/user/max_user_namespaces", "w") as out:
                    out.write("0")
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    if status != 0:
        raise SandboxStartError("could not forbid user namespaces inside the sandbox")


def join_cgroup(parent: str, pid: int, memory: int, processes: int):  # noqa: ANN201 - a cleanup step
    """Put the sandbox in a cgroup of its own under ``parent``, with its memory (swap included) and
    process limits for all its processes together; returns the cgroup's removal."""
    group = f"{parent}/sandbox-{pid}"
    os.mkdir(group)
    for name, value in (("memory.max", memory), ("memory.swap.max", 0), ("pids.max", processes), ("cgroup.procs", pid)):
        with open(f"{group}/{name}", "w") as out:
            out.write(str(value))

    def remove() -> None:
        for _ in range(50):  # its last processes are reaped a moment after bwrap returns
            try:
                os.rmdir(group)
                return
            except OSError:
                time.sleep(0.1)

    return remove


def wire_network(slirp4netns: str, pid: int, rootless: bool):  # noqa: ANN201 - a cleanup step
    """A tap device in the sandbox's network namespace, routed out by slirp4netns, which refuses the
    host's loopback; returns how to stop it (it stops by itself when we exit: its exit pipe closes)."""
    wait_for_loopback(pid)
    exit_r, exit_w = os.pipe()
    ready_r, ready_w = os.pipe()
    command = [slirp4netns, "--configure", "--mtu=65520", "--disable-host-loopback", "--enable-sandbox",
               "--enable-seccomp", "--exit-fd", str(exit_r), "--ready-fd", str(ready_w)]
    if rootless:
        command.append(f"--userns-path=/proc/{pid}/ns/user")
    for fd in (exit_r, ready_w):
        os.set_inheritable(fd, True)
    quiet = [(os.POSIX_SPAWN_OPEN, fd, "/dev/null", os.O_RDWR, 0) for fd in (0, 1, 2)]
    slirp = os.posix_spawn(slirp4netns, [*command, str(pid), "tap0"], os.environ, file_actions=quiet)
    os.close(exit_r)
    os.close(ready_w)
    ready = select.select([ready_r], [], [], START_SECONDS)[0] and os.read(ready_r, 1)
    os.close(ready_r)
    if not ready:
        os.kill(slirp, signal.SIGKILL)
        os.waitpid(slirp, 0)
        raise SandboxStartError("slirp4netns did not bring up the sandbox's network")

    def stop() -> None:
        os.close(exit_w)  # slirp4netns exits when this closes
        os.waitpid(slirp, 0)

    return stop


def wait_for_loopback(pid: int) -> None:
    """Wait until bwrap has brought up the sandbox's loopback interface: slirp4netns brings it up too,
    and whichever comes second fails (bwrap then refuses to start). ``lo`` is up once its broadcast
    route is in the namespace's routing table."""
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/net/fib_trie", "rb") as table:
            if b"127.255.255.255" in table.read():
                return
        time.sleep(0.0005)
    raise SandboxStartError("the sandbox's loopback interface did not come up")


def pass_on_sigterm(pid: int) -> None:
    """On SIGTERM, SIGINT or SIGHUP, send SIGTERM to the sandboxed command (the children of its pid 1)."""

    def forward(_signal: int, _frame: object) -> None:
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as listing:
                children = listing.read().split()
        except OSError:
            return
        for child in children:
            try:
                os.kill(int(child), signal.SIGTERM)
            except ProcessLookupError:
                pass

    for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(number, forward)


def parse(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """``--name[=value]…`` up to ``--``, then the bwrap command."""
    split = argv.index("--")
    options = dict(option.removeprefix("--").partition("=")[::2] for option in argv[:split])
    return options, argv[split + 1:]


if __name__ == "__main__":
    sys.exit(launch(*parse(sys.argv[1:])))
