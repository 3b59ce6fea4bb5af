"""Push and pull a 1 GB bundle with the oras client: Modelhall against the CNCF distribution registry.

Twice: with blobs on the local disk, and with blobs in S3 (a SeaweedFS on loopback, one
bucket each; pulls follow both registries' redirects to presigned URLs). Everything runs
on loopback in this process's lifetime; ``sha256sum`` and ``cp`` of the same file show
the machine's limit. Each figure is the median of RUNS runs.
Run with ``make bench-registry`` (needs Debian's docker-registry).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import oras.client
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from conftest import RegistryServer, free_port  # noqa: E402
from s3_server import ACCESS_KEY, REGION, SECRET_KEY, SeaweedFS, seaweedfs  # noqa: E402

SIZE = int(os.environ.get("BENCH_SIZE_MB", "1024")) * 1024 * 1024
RUNS = int(os.environ.get("BENCH_RUNS", "5"))
SPEC = """name: bench
description: random weights for the registry benchmark
runtime: {adapter: python, entrypoint: predict.py:predict}
files: {weights: [weights.bin]}
"""


def make_bundle(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / "weights.bin"
    if not weights.exists() or weights.stat().st_size != SIZE:
        with weights.open("wb") as out:
            for _ in range(SIZE // (16 * 1024 * 1024)):
                out.write(os.urandom(16 * 1024 * 1024))
    (directory / "modelhall.yaml").write_text(SPEC)
    return directory


def peak_rss_mb(pid: int) -> float:
    """The process's high-water resident memory (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def filesystem_storage(directory: Path) -> str:
    return f"filesystem: {{rootdirectory: {directory}}}"


def s3_storage(server: SeaweedFS) -> str:
    """distribution's ``s3`` driver on the bench's SeaweedFS (a path-style endpoint, plain HTTP)."""
    return (f"s3: {{accesskey: {ACCESS_KEY}, secretkey: {SECRET_KEY}, region: {REGION}, "
            f"regionendpoint: '{server.endpoint}', bucket: {server.new_bucket()}, secure: false, v4auth: true}}")


@contextmanager
def distribution(workdir: Path, storage: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    config = workdir / f"distribution-{port}.yml"
    config.write_text(f"""version: 0.1
log: {{level: error}}
storage:
  {storage}
  delete: {{enabled: true}}
http: {{addr: 127.0.0.1:{port}}}
""")
    # Its AWS SDK panics on AWS_CA_BUNDLE with its own HTTP transport; the bench's S3 is plain HTTP anyway.
    env = {name: value for name, value in os.environ.items() if name != "AWS_CA_BUNDLE"}
    process = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=env)
    host = f"127.0.0.1:{port}"
    for _ in range(100):
        try:
            httpx.get(f"http://{host}/v2/", timeout=1)
            break
        except httpx.TransportError:
            time.sleep(0.1)
    try:
        yield host, process
    finally:
        process.terminate()
        process.wait()


@contextmanager
def modelhall(workdir: Path, env: dict[str, str] | None = None
              ) -> Iterator[tuple[str, subprocess.Popen[bytes], tuple[str, str]]]:
    server = RegistryServer(data_dir=workdir / f"modelhall-data-{free_port()}", database=None, extra_env=env or {})
    server.start(ready_within=180)  # the bench machine may be busy
    try:
        assert server.process is not None
        yield server.host, server.process, server.user("write", name="bench")
    finally:
        server.stop()


def oras_for(host: str, credentials: tuple[str, str] | None) -> oras.client.OrasClient:
    client = oras.client.OrasClient(hostname=host, insecure=True, auth_backend="token")
    if credentials:
        client.auth.set_basic_auth(*credentials)
    return client


def timed(action: Callable[[], object]) -> float:
    """Seconds ``action`` takes, after flushing dirty pages so earlier writes do not land in it."""
    os.sync()
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


@dataclass
class Target:
    name: str
    host: str
    process: subprocess.Popen[bytes]
    credentials: tuple[str, str] | None
    pushes: list[float] = field(default_factory=list)
    pulls: list[float] = field(default_factory=list)
    peak_rss: float = 0.0

    def run(self, index: int, scratch: Path) -> None:
        reference = f"{self.host}/bench/run{index}:v1"
        self.pushes.append(timed(lambda: oras_for(self.host, self.credentials).push(
            target=reference, files=["modelhall.yaml", "weights.bin"], quiet=True)))
        out = scratch / f"pull-{self.name}-{index}"
        self.pulls.append(timed(lambda: oras_for(self.host, self.credentials).pull(target=reference, outdir=str(out))))
        shutil.rmtree(out)

    def rate(self, seconds: list[float]) -> float:
        return SIZE / statistics.median(seconds) / 1e6


def limits(bundle: Path, scratch: Path) -> dict[str, float]:
    """sha256sum and cp of the weights file: what any registry's push and pull are bounded by."""
    weights = bundle / "weights.bin"
    hashing = [timed(lambda: subprocess.run(["sha256sum", str(weights)], check=True, capture_output=True))
               for _ in range(RUNS)]
    copying = [timed(lambda: shutil.copyfile(weights, scratch / "copy.bin")) for _ in range(RUNS)]
    return {"sha256sum": SIZE / statistics.median(hashing) / 1e6, "cp": SIZE / statistics.median(copying) / 1e6}


def compare(workdir: Path, storage: str, modelhall_env: dict[str, str] | None,
            distribution_storage: str) -> tuple[Target, Target]:
    """Modelhall and distribution on one kind of storage, taking turns run by run."""
    with modelhall(workdir, modelhall_env) as (host, process, credentials), \
            distribution(workdir, distribution_storage) as (their_host, theirs):
        ours = Target(f"modelhall-{storage}", host, process, credentials)
        baseline = Target(f"distribution-{storage}", their_host, theirs, None)
        for index in range(RUNS):
            for target in (ours, baseline):
                target.run(index, workdir)
        ours.peak_rss, baseline.peak_rss = peak_rss_mb(process.pid), peak_rss_mb(theirs.pid)
    return ours, baseline


def main() -> None:
    console = Console(width=120)
    bundle = make_bundle(ROOT / ".bench" / "bundle")
    os.chdir(bundle)
    with tempfile.TemporaryDirectory(prefix="modelhall-bench-", dir=ROOT / ".bench") as temp:
        workdir = Path(temp)
        console.print(f"{SIZE / 2**20:.0f} MiB of random weights, median of {RUNS} runs, oras-py client; "
                      "the registries take turns run by run")
        pairs = {"filesystem": compare(workdir, "filesystem", None, filesystem_storage(workdir / "distribution-data"))}
        with seaweedfs(workdir / "seaweedfs") as server:
            modelhall_env = {"MODELHALL_STORAGE": server.storage_url(server.new_bucket()), **server.env}
            pairs["S3"] = compare(workdir, "s3", modelhall_env, s3_storage(server))
        limit = limits(bundle, workdir)
    table = Table("operation", "Modelhall MB/s", "distribution MB/s", "Modelhall / distribution")
    for storage, (ours, baseline) in pairs.items():
        for operation, ours_s, theirs_s in (("push", ours.pushes, baseline.pushes),
                                            ("pull", ours.pulls, baseline.pulls)):
            table.add_row(f"{operation} ({storage})", f"{ours.rate(ours_s):.0f}", f"{baseline.rate(theirs_s):.0f}",
                          f"{ours.rate(ours_s) / baseline.rate(theirs_s):.2f}")
    table.add_row("sha256sum (limit)", f"{limit['sha256sum']:.0f}", "", "")
    table.add_row("cp (limit)", f"{limit['cp']:.0f}", "", "")
    for storage, (ours, baseline) in pairs.items():
        table.add_row(f"peak registry RSS, MB ({storage})", f"{ours.peak_rss:.0f}", f"{baseline.peak_rss:.0f}", "")
    console.print(table)


if __name__ == "__main__":
    main()
