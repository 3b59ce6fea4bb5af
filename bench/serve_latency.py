"""Per starter template: time to load, and prediction latency through each path.

For every template: the model server's start-to-ready time, then p50/p99 latency of
the same prediction as a direct in-process call to the adapter (the baseline, run in
this process), through ``POST /predict``, and through ``gradio_client``. The overhead
columns are the HTTP paths minus the direct call at p50. Run with ``make bench-serve``.
"""

from __future__ import annotations

import base64
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from gradio_client import Client, handle_file
from rich.console import Console
from rich.table import Table

from modelhall.showcase.runner import ModelRunner
from modelhall.spec import load_spec_file
from modelhall.templates import template_path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from conftest import ModelServer  # noqa: E402

CALLS = int(os.environ.get("BENCH_CALLS", "60"))
CASES: dict[str, tuple[dict[str, Any], int]] = {  # template → (inputs, calls as a share of CALLS)
    "hello": ({"name": "Ada", "style": "plain"}, 1),
    "image-classification": ({"image": "examples/digit-3.png"}, 1),
    "image-to-image": ({"photo": "examples/beach.png"}, 3),
    "text-generation": ({"prompt": "Say hi.", "max_new_tokens": 8}, 6),
}


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1000, ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000


def timed_calls(call: Callable[[], object], count: int) -> list[float]:
    call()  # warm-up
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return samples


def resolve(bundle: Path, inputs: dict[str, Any]) -> dict[str, Any]:
    return {k: bundle / v if isinstance(v, str) and v.startswith("examples/") else v for k, v in inputs.items()}


def as_json(inputs: dict[str, Any]) -> dict[str, Any]:
    return {k: {"data": base64.b64encode(v.read_bytes()).decode(), "name": v.name} if isinstance(v, Path) else v
            for k, v in inputs.items()}


def as_gradio(spec_inputs: list[Any], inputs: dict[str, Any]) -> list[Any]:
    values = []
    for field in spec_inputs:
        value = inputs.get(field.name, getattr(field, "default", None))
        values.append(handle_file(str(value)) if isinstance(value, Path) else value)
    return values


def bench_template(name: str, scratch: Path) -> dict[str, Any]:
    bundle = template_path(name)
    spec = load_spec_file(bundle)
    raw, share = CASES[name]
    inputs = resolve(bundle, raw)
    count = max(5, CALLS // share)

    runner = ModelRunner(spec, bundle, scratch / f"direct-{name}")
    runner.load()
    direct = timed_calls(lambda: runner.predict(inputs), count)

    server = ModelServer(bundle=bundle, log=scratch / f"serve-{name}.log")
    started = time.perf_counter()
    server.start(ready_within=300)
    load_seconds = time.perf_counter() - started
    try:
        with httpx.Client(base_url=server.url, timeout=120) as http:
            body = {"inputs": as_json(inputs)}
            api = timed_calls(lambda: http.post("/predict", json=body).raise_for_status(), count)
        client = Client(server.url, verbose=False, download_files=str(scratch / "downloads"))
        arguments = as_gradio(spec.inputs, inputs)
        gradio = timed_calls(lambda: client.predict(*arguments, api_name="/predict"), count)
        client.close()
    finally:
        server.stop()
    return {"load": load_seconds, "calls": count, "direct": percentiles(direct), "api": percentiles(api),
            "gradio": percentiles(gradio)}


def main() -> None:
    console = Console(width=170)
    rows = {}
    with tempfile.TemporaryDirectory(prefix="modelhall-bench-serve-") as temp:
        for name in CASES:
            console.print(f"benchmarking {name} …")
            rows[name] = bench_template(name, Path(temp))
    table = Table("template", "start→ready s", "calls", "direct p50/p99 ms", "POST /predict p50/p99 ms",
                  "gradio_client p50/p99 ms", "HTTP overhead p50 ms", "gradio overhead p50 ms",
                  title="Prediction latency; overhead = path p50 − direct p50 (direct call = baseline, this process)")
    for name, row in rows.items():
        table.add_row(name, f"{row['load']:.1f}", str(row["calls"]),
                      "{:.2f} / {:.2f}".format(*row["direct"]), "{:.2f} / {:.2f}".format(*row["api"]),
                      "{:.2f} / {:.2f}".format(*row["gradio"]), f"{row['api'][0] - row['direct'][0]:.2f}",
                      f"{row['gradio'][0] - row['direct'][0]:.2f}")
    console.print(table)


if __name__ == "__main__":
    main()
