"""Cold starts, warm latency through the gateway, and environment builds, for the local runtime.

Per starter template: cold start (a request to a sleeping deployment, until its answer)
beside the bare cost (a fresh python process that loads the same model and predicts
once); warm predict latency through the gateway beside the worker called directly on its
socket. The gateway's overhead is the difference of the medians of each call's time minus the
time the model itself took (the worker reports it with each answer): a slow model's own
variation, tens of milliseconds, would otherwise hide a difference of a few. Then
environment builds: fresh, rebuilt with one extra package, and plain ``uv venv`` +
``uv pip install`` of the same requirements as the baseline. Medians of several runs, all in
this process. Run with ``make bench-runtime``.
"""

from __future__ import annotations

import base64
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table
from sqlalchemy import select

from modelhall.adapters.runtimes.environments import EnvironmentBuilder, EnvironmentSpec, default_python, find_uv
from modelhall.bundle import pack_bundle
from modelhall.registry.db.models import Worker
from modelhall.registry.db.session import make_session_factory
from modelhall.templates import template_path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from conftest import RegistryServer  # noqa: E402
from oci_helpers import http, push_packed  # noqa: E402

COLD_RUNS = int(os.environ.get("BENCH_COLD_RUNS", "3"))
WARM_CALLS = int(os.environ.get("BENCH_WARM_CALLS", "100"))
INPUTS: dict[str, dict[str, Any]] = {
    "hello": {"name": "Ada"},
    "image-classification": {"image": "examples/digit-3.png"},
    "image-to-image": {"photo": "examples/beach.png"},
    "text-generation": {"prompt": "Say hi.", "max_new_tokens": 8},
}
BARE = """
import sys, tempfile
from pathlib import Path
from modelhall.showcase.runner import ModelRunner
from modelhall.showcase.values import coerce_text_values
from modelhall.spec import load_spec_file
bundle = Path(sys.argv[1]); inputs = dict(arg.split("=", 1) for arg in sys.argv[2:])
runner = ModelRunner(load_spec_file(bundle), bundle, Path(tempfile.mkdtemp()))
runner.load()
runner.predict(coerce_text_values(runner.spec, inputs))
"""
IDLE_TIMEOUT_SECONDS = 10
REAPER_INTERVAL_SECONDS = 1  # the default is 5; a second finds each sleeping model sooner
ENV_REQUIREMENTS = ("requests", "tqdm")
EXTRA_PACKAGE = "six"


def post_ok(client: httpx.Client, url: str, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post(url, json=body)
    if response.status_code != 200:
        raise RuntimeError(f"{url} answered {response.status_code}: {response.text[:500]}")
    return response.json()


def timed_call(client: httpx.Client, url: str, body: dict[str, Any]) -> tuple[float, float]:
    """(seconds the call took, seconds of it that were not the model's own)."""
    started = time.perf_counter()
    answer = post_ok(client, url, body)
    took = time.perf_counter() - started
    return took, took - answer["duration_ms"] / 1000


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def as_json(bundle: Path, inputs: dict[str, Any]) -> dict[str, Any]:
    return {k: {"data": base64.b64encode((bundle / v).read_bytes()).decode(), "name": Path(v).name}
            if isinstance(v, str) and v.startswith("examples/") else v for k, v in inputs.items()}


def quick_sleeper(name: str, scratch: Path) -> Path:
    """The template with a short idle timeout, so it falls asleep between cold starts (long
    enough for the worker to build its demo before the warm calls)."""
    bundle = scratch / name
    shutil.copytree(template_path(name), bundle)
    spec = (bundle / "modelhall.yaml").read_text()
    idle = f"idle_timeout: {IDLE_TIMEOUT_SECONDS}"
    (bundle / "modelhall.yaml").write_text(spec + f"\nscaling: {{min: 0, max: 1, {idle}}}\n"
                                           if "scaling:" not in spec else
                                           spec.replace("idle_timeout: 300", idle).replace("idle_timeout: 600", idle))
    return bundle


def state(client: httpx.Client, repository: str) -> str:
    """The deployment's state; "sleeping" only once its workers are stopped too (the reaper marks the
    deployment first), so a cold start is measured from nothing running."""
    status = client.get(f"/api/v1/repos/{repository}/deployment").json()
    running = any(worker["state"] in ("starting", "ready") for worker in status["workers"])
    return "stopping" if status["state"] == "sleeping" and running else status["state"]


def wait_asleep(client: httpx.Client, repository: str) -> None:
    deadline = time.monotonic() + 120
    while (current := state(client, repository)) != "sleeping":
        if time.monotonic() > deadline:
            raise RuntimeError(f"{repository} did not fall asleep; it is {current}")
        time.sleep(0.2)


def wait_demo_built(worker: httpx.Client, keep_awake: Callable[[], object]) -> None:
    """A worker builds its demo once the model has loaded and the API is quiet: warm calls are
    measured after that, on a worker in its steady state. A build slower than the idle timeout
    (on a busy machine) would see the worker put to sleep: ``keep_awake`` asks the gateway now and then."""
    deadline = time.monotonic() + 120
    last_request = time.monotonic()
    while worker.get("/healthz").json().get("demo") != "ready":
        if time.monotonic() > deadline:
            raise RuntimeError("the worker's demo was not built within 120 s")
        if time.monotonic() - last_request > IDLE_TIMEOUT_SECONDS / 2:
            keep_awake()
            last_request = time.monotonic()
        time.sleep(0.2)


def bare_seconds(bundle: Path, inputs: dict[str, Any]) -> float:
    arguments = [f"{k}=@{bundle / v}" if isinstance(v, str) and v.startswith("examples/") else f"{k}={v}"
                 for k, v in inputs.items()]
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", BARE, str(bundle), *arguments], check=True, capture_output=True)
    return time.perf_counter() - started


def bench_template(registry: RegistryServer, token: str, user: str, name: str, scratch: Path) -> dict[str, float]:
    bundle = quick_sleeper(name, scratch)
    repository = f"{user}/{name}"
    client = http(registry.url, token)
    client.timeout = httpx.Timeout(300)
    with pack_bundle(bundle) as packed:
        push_packed(client, repository, "latest", packed)
    body = {"inputs": as_json(bundle, INPUTS[name])}
    post_ok(client, f"/api/v1/repos/{repository}/predict", body)  # builds the environment
    cold = []
    for _ in range(COLD_RUNS):
        wait_asleep(client, repository)
        started = time.perf_counter()
        post_ok(client, f"/api/v1/repos/{repository}/predict", body)
        cold.append(time.perf_counter() - started)
    wait_asleep(client, repository)  # so that no worker shares the machine with the bare processes
    bare = [bare_seconds(bundle, INPUTS[name]) for _ in range(COLD_RUNS)]
    post_ok(client, f"/api/v1/repos/{repository}/predict", body)  # awake for the warm calls
    status = client.get(f"/api/v1/repos/{repository}/deployment").json()
    ready = next(w for w in status["workers"] if w["state"] == "ready")
    worker = httpx.Client(transport=httpx.HTTPTransport(uds=_socket_of(registry, ready["id"])),
                          base_url="http://worker", timeout=300)
    wait_demo_built(worker, lambda: post_ok(client, f"/api/v1/repos/{repository}/predict", body))
    gateway, direct = [], []
    for _ in range(WARM_CALLS):  # interleaved, so both see the same machine
        gateway.append(timed_call(client, f"/api/v1/repos/{repository}/predict", body))
        direct.append(timed_call(worker, "/predict", body))
    worker.close()
    return {"cold": median_ms(cold), "bare": median_ms(bare),
            "gateway": median_ms([took for took, _ in gateway]), "direct": median_ms([took for took, _ in direct]),
            "overhead": median_ms([rest for _, rest in gateway]) - median_ms([rest for _, rest in direct])}


def _socket_of(registry: RegistryServer, worker_id: str) -> str:
    engine = registry.engine()
    try:
        with make_session_factory(engine)() as db:
            return db.scalar(select(Worker.endpoint).where(Worker.handle == worker_id)).removeprefix("unix:")
    finally:
        engine.dispose()


def bench_environments(scratch: Path) -> dict[str, float]:
    uv = find_uv()
    builder = EnvironmentBuilder(scratch / "envs", scratch / "uv-cache")
    started = time.perf_counter()
    builder.ensure(EnvironmentSpec(default_python(), ENV_REQUIREMENTS))
    fresh = time.perf_counter() - started
    started = time.perf_counter()
    grown = builder.ensure(EnvironmentSpec(default_python(), tuple(sorted((*ENV_REQUIREMENTS, EXTRA_PACKAGE)))))
    rebuild = time.perf_counter() - started
    plain = []
    environment = {**os.environ, "UV_CACHE_DIR": str(scratch / "uv-cache")}
    for index in range(3):
        target = scratch / f"plain-{index}"
        started = time.perf_counter()
        subprocess.run([uv, "venv", "-q", str(target)], check=True, env=environment)
        subprocess.run([uv, "pip", "install", "-q", "--python", str(target / "bin" / "python"), *ENV_REQUIREMENTS,
                        EXTRA_PACKAGE], check=True, env=environment)
        plain.append(time.perf_counter() - started)
    return {"fresh": fresh, "rebuild": rebuild, "plain": statistics.median(plain),
            "installed": ", ".join(grown.record.installed)}


def main() -> None:
    console = Console(width=150)
    rows = {}
    with tempfile.TemporaryDirectory(prefix="modelhall-bench-runtime-") as temp:
        scratch = Path(temp)
        server = RegistryServer(data_dir=scratch / "registry", database=None,
                                extra_env={"MODELHALL_REAPER_INTERVAL": str(REAPER_INTERVAL_SECONDS)})
        server.start()
        try:
            user, token = server.user()
            for name in os.environ.get("BENCH_TEMPLATES", ",".join(INPUTS)).split(","):
                console.print(f"benchmarking {name} …")
                rows[name] = bench_template(server, token, user, name, scratch)
        finally:
            server.stop()
            log = scratch / f"registry-{server.port}.log"
            (ROOT / ".bench").mkdir(exist_ok=True)
            shutil.copyfile(log, ROOT / ".bench" / "runtime-registry.log")  # kept for a look after the run
            shutil.rmtree(ROOT / ".bench" / "runtime-workers", ignore_errors=True)
            shutil.copytree(scratch / "registry" / "logs", ROOT / ".bench" / "runtime-workers")
        console.print("benchmarking environment builds …")
        environments = bench_environments(scratch)
    table = Table("template", "cold start ms", "bare process ms", "cold-start overhead ms", "warm via gateway p50 ms",
                  "worker direct p50 ms", "gateway overhead p50 ms",
                  title=f"Local runtime (medians: {COLD_RUNS} cold starts, {WARM_CALLS} warm calls each)")
    for name, row in rows.items():
        table.add_row(name, f"{row['cold']:.0f}", f"{row['bare']:.0f}", f"{row['cold'] - row['bare']:.0f}",
                      f"{row['gateway']:.2f}", f"{row['direct']:.2f}", f"{row['overhead']:.2f}")
    console.print(table)
    builds = Table("environment", "seconds", title=f"Builds of {', '.join(ENV_REQUIREMENTS)} (+ {EXTRA_PACKAGE})")
    builds.add_row("fresh (empty download cache)", f"{environments['fresh']:.2f}")
    builds.add_row(f"rebuilt with {EXTRA_PACKAGE} added (installed: {environments['installed']})",
                   f"{environments['rebuild']:.2f}")
    builds.add_row("plain uv venv + uv pip install, same packages, warm cache (baseline)",
                   f"{environments['plain']:.2f}")
    console.print(builds)


if __name__ == "__main__":
    main()
