"""The Kubernetes runtime end to end, on the Kubernetes API test double: the registry (a real ``modelhall up``
process with MODELHALL_RUNTIME=kubernetes) creates Deployments, scales them, follows their pods; the double's
kubelet runs the model-server image's entry (``python -m modelhall.showcase.bootstrap``) as local processes,
which fetch their bundle from the registry with their version pull token and answer on their pod address."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import RegistryServer, serve_registry
from kubernetes_double import KubernetesDouble, Node, gpu_node
from test_runtime import predict, push, quick_hello, status, wait_for

IMAGE = "registry.example/modelhall/model-server@sha256:" + "1" * 64


def kubernetes_env(double: KubernetesDouble, **extra: str) -> dict[str, str]:
    return {"MODELHALL_RUNTIME": "kubernetes", "MODELHALL_K8S_KUBECONFIG": str(double.kubeconfig),
            "MODELHALL_K8S_NAMESPACE": double.namespace, "MODELHALL_K8S_IMAGE": IMAGE,
            "MODELHALL_REAPER_INTERVAL": "0.5", "MODELHALL_K8S_UNSCHEDULABLE_WAIT": "1", **extra}


@pytest.fixture
def double(tmp_path: Path) -> Iterator[KubernetesDouble]:
    folder = tmp_path / "double"
    folder.mkdir()
    with KubernetesDouble(folder, nodes=[Node("cpu-1"), Node("cpu-2"), gpu_node("gpu-1", "NVIDIA-L4")]) as served:
        yield served


@pytest.fixture
def k8s_registry(double: KubernetesDouble, tmp_path: Path) -> Iterator[RegistryServer]:
    yield from serve_registry("sqlite", tmp_path / "registry", kubernetes_env(double))


def deployments(double: KubernetesDouble) -> list[dict]:
    return double.objects("deployments")


def ready_pods(double: KubernetesDouble) -> list[dict]:
    return [pod for pod in double.pods() if any(c["type"] == "Ready" and c["status"] == "True"
                                                for c in pod["status"].get("conditions", []))]


def test_wake_predict_and_sleep_on_a_deployment(k8s_registry: RegistryServer, double: KubernetesDouble,
                                                tmp_path: Path) -> None:
    user, _, digest = push(k8s_registry, quick_hello(tmp_path), "podded")
    repository = f"{user}/podded"
    answer = predict(k8s_registry, repository, "Ada")
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"] == {"greeting": "Hello, Ada."} and answer.json()["digest"] == digest
    [deployment] = deployments(double)
    labels = deployment["metadata"]["labels"]
    assert labels["app.kubernetes.io/managed-by"] == "modelhall"
    assert labels["modelhall.io/digest"] == digest.split(":")[1][:63]
    assert deployment["spec"]["replicas"] == 1
    [pod] = ready_pods(double)
    [worker] = status(k8s_registry, repository)["workers"]
    assert worker["id"].startswith(f"{pod['metadata']['name']}/{pod['metadata']['uid']}/")  # the runtime's id: the pod
    scale_calls = [r for r in double.api.requests if r[1].endswith("/scale") and r[0] == "PATCH"]
    pod_lists = [r for r in double.api.requests if r[0] == "GET" and r[1].endswith("/pods")]
    assert len(scale_calls) == 1
    assert all("watch=true" in query for _, _, query in pod_lists[1:])  # followed by a watch, not polled
    wait_for(lambda: status(k8s_registry, repository)["state"] == "sleeping", "scaling to zero")
    wait_for(lambda: not double.pods(), "the pod going")
    assert deployments(double)[0]["spec"]["replicas"] == 0
