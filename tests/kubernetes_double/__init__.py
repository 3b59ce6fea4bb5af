"""A Kubernetes API test double: no API server runs here, so the platform's Kubernetes code is tested
against this strict stand-in (see ``server.py`` for what it serves, ``schemas.py`` for what it refuses,
``cluster.py`` for its scheduler and kubelet).

    with KubernetesDouble(nodes=[Node("cpu-1"), gpu_node("gpu-1", "NVIDIA-L4")]) as double:
        double.kubeconfig  # a kubeconfig file the official client (or MODELHALL_K8S_KUBECONFIG) loads
        double.api.requests  # what the client asked, in order
        double.cluster.store.list("pods", double.namespace)

Fixtures (``from kubernetes_double.fixtures import kubernetes_double``): ``kubernetes_double``
gives a fresh double per test with two CPU nodes and one L4 GPU node.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from types import TracebackType

import uvicorn
import yaml

from .cluster import Cluster, Node, gpu_node
from .server import API

__all__ = ["KubernetesDouble", "Node", "gpu_node", "DEFAULT_NAMESPACE", "default_nodes"]

DEFAULT_NAMESPACE = "modelhall-models"


def default_nodes() -> list[Node]:
    return [Node("cpu-1"), Node("cpu-2"), gpu_node("gpu-1", "NVIDIA-L4")]


class KubernetesDouble:
    def __init__(self, folder: Path, nodes: list[Node] | None = None, namespace: str = DEFAULT_NAMESPACE,
                 runtime_classes: frozenset[str] = frozenset({"nvidia"}), probe_period_scale: float = 0.05,
                 pod_security: str | None = "restricted"):
        """``pod_security``: the namespace's Pod Security level (``restricted``, as Modelhall's models
        namespace; None for one that enforces none, as an OpenFaaS functions namespace)."""
        self.namespace = namespace
        labels = {"pod-security.kubernetes.io/enforce": pod_security} if pod_security else {}
        self.cluster = Cluster(nodes if nodes is not None else default_nodes(), {namespace: labels},
                               set(runtime_classes), probe_period_scale)
        self.api = API(self.cluster)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.kubeconfig = folder / "kubeconfig"
        self.kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "double",
            "clusters": [{"name": "double", "cluster": {"server": self.url}}],
            "users": [{"name": "double", "user": {"token": "double-token"}}],
            "contexts": [{"name": "double", "context": {"cluster": "double", "user": "double",
                                                        "namespace": namespace}}]}))
        config = uvicorn.Config(self.api.app(), host="127.0.0.1", port=self.port, log_level="warning",
                                timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> KubernetesDouble:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the Kubernetes API double did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.cluster.shutdown()
        self._server.should_exit = True
        self._thread.join(10)

    def pods(self, selector: str | None = None) -> list[dict]:
        return self.cluster.store.list("pods", self.namespace, selector)

    def objects(self, resource: str, selector: str | None = None) -> list[dict]:
        return self.cluster.store.list(resource, self.namespace, selector)
