"""The Kubernetes runtime's own cost, on the Kubernetes API test double (``make bench-kubernetes``).

A wake is split where the platform hands over to the cluster and back:

- **request → scale call**: from the prediction request to the double receiving the ``scale`` PATCH (the
  registry finding the version, creating its Deployment, Secret and NetworkPolicy the first time);
- **pod start (the double's)**: from the scale call to the pod's readiness probe passing — the double's
  scheduler and kubelet, and the model server fetching its bundle and loading the model;
- **pod Ready → answer**: from Ready to the caller having its answer (the watch event reaching the registry,
  its health check, the prediction itself).

The platform's overhead per wake is the first plus the last. Then warm calls: each prediction through the
gateway beside the same pod called directly on its address; the overhead is the difference of the medians
of each call's time minus the model's own (reported with each answer). Medians of several runs, all in this
process. A real cluster's pod start (image pull, scheduling, container start) cannot be measured here: the
double's pod start is a local process.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from modelhall.bundle import pack_bundle
from modelhall.templates import template_path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from conftest import RegistryServer  # noqa: E402
from kubernetes_double import KubernetesDouble  # noqa: E402
from oci_helpers import http, push_packed  # noqa: E402

WAKES = int(os.environ.get("BENCH_WAKES", "5"))
WARM_CALLS = int(os.environ.get("BENCH_WARM_CALLS", "200"))
IDLE_TIMEOUT_SECONDS = 2
TARGET_WAKE_MS = 300
TARGET_WARM_MS = 5


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def predict(client: httpx.Client, url: str) -> dict[str, Any]:
    response = client.post(url, json={"inputs": {"name": "Ada"}})
    if response.status_code != 200:
        raise RuntimeError(f"{url} answered {response.status_code}: {response.text[:500]}")
    return response.json()


def wait_asleep(double: KubernetesDouble) -> None:
    deadline = time.monotonic() + 120
    while double.pods():
        if time.monotonic() > deadline:
            raise RuntimeError("the model did not fall asleep")
        time.sleep(0.1)


def one_wake(double: KubernetesDouble, client: httpx.Client, url: str) -> dict[str, float]:
    wait_asleep(double)
    seen = len(double.api.requests)
    started = time.perf_counter()
    predict(client, url)
    answered = time.perf_counter()
    scaled = next(at for (method, path, _), at in zip(double.api.requests[seen:], double.api.received_at[seen:])
                  if method == "PATCH" and path.endswith("/scale"))
    [pod] = double.pods()
    ready = double.cluster.ready_at[pod["metadata"]["uid"]]
    return {"to_scale": scaled - started, "pod_start": ready - scaled, "to_answer": answered - ready,
            "total": answered - started}


def main() -> None:
    console = Console(width=140)
    scratch = Path(tempfile.mkdtemp(prefix="bench-k8s-"))
    bundle = scratch / "hello"
    shutil.copytree(template_path("hello"), bundle)
    spec = bundle / "modelhall.yaml"
    spec.write_text(spec.read_text().replace("idle_timeout: 300", f"idle_timeout: {IDLE_TIMEOUT_SECONDS}"))
    (scratch / "double").mkdir()
    with KubernetesDouble(scratch / "double", probe_period_scale=0.05) as double:
        registry = RegistryServer(data_dir=scratch / "registry", database=None, extra_env={
            "MODELHALL_RUNTIME": "kubernetes", "MODELHALL_K8S_KUBECONFIG": str(double.kubeconfig),
            "MODELHALL_K8S_NAMESPACE": double.namespace, "MODELHALL_REAPER_INTERVAL": "0.5",
            "MODELHALL_K8S_IMAGE": "registry.example/modelhall/model-server@sha256:" + "1" * 64})
        (scratch / "registry").mkdir()
        registry.start()
        try:
            user, token = registry.user()
            client = http(registry.url, token)
            client.timeout = httpx.Timeout(300)
            with pack_bundle(bundle) as packed:
                push_packed(client, f"{user}/hello", "latest", packed)
            url = f"/api/v1/repos/{user}/hello/predict"
            predict(client, url)  # the first wake creates the Deployment and its objects
            wakes = [one_wake(double, client, url) for _ in range(WAKES)]
            [pod] = double.pods()
            direct = httpx.Client(base_url=f"http://{pod['status']['podIP']}:8080", timeout=60)
            gateway_calls, direct_calls = [], []
            for _ in range(WARM_CALLS):  # interleaved, so that both see the same machine
                for calls, caller, path in ((gateway_calls, client, url), (direct_calls, direct, "/predict")):
                    began = time.perf_counter()
                    answer = predict(caller, path)
                    took = time.perf_counter() - began
                    calls.append((took, took - answer["duration_ms"] / 1000))
                if len(double.pods()) != 1:
                    raise RuntimeError("the pod went away during the warm calls")
            direct.close()
        finally:
            registry.stop()
    shutil.rmtree(scratch, ignore_errors=True)

    table = Table(title=f"Kubernetes runtime on the API double: {WAKES} wakes of the hello template (median ms)")
    for column in ("request → scale call", "double's pod start", "pod Ready → answer", "whole wake",
                   "platform overhead", "target"):
        table.add_column(column, justify="right")
    to_scale = median_ms([w["to_scale"] for w in wakes])
    to_answer = median_ms([w["to_answer"] for w in wakes])
    platform = median_ms([w["to_scale"] + w["to_answer"] for w in wakes])
    table.add_row(f"{to_scale:.0f}", f"{median_ms([w['pod_start'] for w in wakes]):.0f}", f"{to_answer:.0f}",
                  f"{median_ms([w['total'] for w in wakes]):.0f}", f"{platform:.0f}", f"≤ {TARGET_WAKE_MS}")
    console.print(table)
    warm = Table(title=f"Warm predictions, {WARM_CALLS} calls each (median ms)")
    for column in ("through the gateway", "the pod directly", "gateway overhead (p50)", "ratio", "target"):
        warm.add_column(column, justify="right")
    gateway_ms = median_ms([took for took, _ in gateway_calls])
    direct_ms = median_ms([took for took, _ in direct_calls])
    overhead = median_ms([rest for _, rest in gateway_calls]) - median_ms([rest for _, rest in direct_calls])
    warm.add_row(f"{gateway_ms:.2f}", f"{direct_ms:.2f}", f"{overhead:.2f}", f"{gateway_ms / direct_ms:.2f}×",
                 f"≤ {TARGET_WARM_MS}")
    console.print(warm)
    console.print("A real cluster's pod start (scheduling, image pull, container start) cannot be measured here: "
                  "the double's pod start is a local process on this machine. The platform's share of a wake is "
                  "what the registry spends before the scale call and after the pod is Ready.")
    console.print(f"platform overhead per wake: {platform:.0f} ms "
                  f"({'within' if platform <= TARGET_WAKE_MS else 'OVER'} the {TARGET_WAKE_MS} ms target); "
                  f"warm overhead p50: {overhead:.2f} ms "
                  f"({'within' if overhead <= TARGET_WARM_MS else 'OVER'} the {TARGET_WARM_MS} ms target)")


if __name__ == "__main__":
    main()
