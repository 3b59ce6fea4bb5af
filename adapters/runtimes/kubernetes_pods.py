"""What the Kubernetes runtime and its environment builds share: the platform's pods, followed by one
watch, their logs, their labels, and the hardening every pod the platform makes gets."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

logger = logging.getLogger(__name__)

MANAGED_BY = "app.kubernetes.io/managed-by"
PLATFORM = "modelhall"
DEPLOYMENT_LABEL = "modelhall.io/deployment"
WATCH_SECONDS = 300
# Non-root, read-only root, no privilege escalation, no capabilities, seccomp RuntimeDefault: Pod Security
# "restricted", for model pods and build pods alike.
CONTAINER_SECURITY = {"runAsNonRoot": True, "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                      "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}
POD_SECURITY = {"runAsNonRoot": True, "runAsUser": 65534, "runAsGroup": 65534, "fsGroup": 65534,
                "seccompProfile": {"type": "RuntimeDefault"}}


def connect(kubeconfig: str | None) -> client.ApiClient:
    """A client for the cluster: ``kubeconfig``'s, else the in-cluster service account's, else the one
    ``~/.kube/config`` (or ``KUBECONFIG``) names."""
    if kubeconfig:
        return config.new_client_from_config(kubeconfig)
    try:
        config.load_incluster_config()
    except config.ConfigException:
        return config.new_client_from_config()
    return client.ApiClient()


def read_pod_log(core: client.CoreV1Api, namespace: str, pod: str, lines: int) -> str:
    """The last ``lines`` of a pod's log; nothing for a pod that is gone or has not started yet."""
    try:
        return str(core.read_namespaced_pod_log(pod, namespace, tail_lines=lines))
    except ApiException as error:
        if error.status in (400, 404):
            return ""
        raise


class PodCache:
    """The platform's pods in the namespace, kept current by one watch (relisted when it expires)."""

    def __init__(self, core: client.CoreV1Api, namespace: str):
        self.core, self.namespace = core, namespace
        self.pods: dict[str, dict[str, Any]] = {}
        self.changed = threading.Condition()
        self._synced = threading.Event()
        self._stopped = threading.Event()
        self._watch: watch.Watch | None = None
        self._thread = threading.Thread(target=self._follow, name="modelhall-pod-watch", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        selector = f"{MANAGED_BY}={PLATFORM}"
        while not self._stopped.is_set():
            try:
                listed = self.core.list_namespaced_pod(self.namespace, label_selector=selector,
                                                       _preload_content=False)
                body = json.loads(listed.data)
                with self.changed:
                    self.pods = {pod["metadata"]["name"]: pod for pod in body["items"]}
                    self.changed.notify_all()
                self._synced.set()
                version = body["metadata"]["resourceVersion"]
                self._watch = watch.Watch()
                for event in self._watch.stream(self.core.list_namespaced_pod, self.namespace,
                                                label_selector=selector, resource_version=version,
                                                timeout_seconds=WATCH_SECONDS, deserialize=False):
                    pod = event["object"]
                    with self.changed:
                        if event["type"] == "DELETED":
                            self.pods.pop(pod["metadata"]["name"], None)
                        elif event["type"] in ("ADDED", "MODIFIED"):
                            self.pods[pod["metadata"]["name"]] = pod
                        self.changed.notify_all()
            except Exception:  # noqa: BLE001 - the API server went away for a moment: relist and watch again
                if self._stopped.is_set():
                    return
                logger.warning("the pod watch failed; relisting", exc_info=True)
                time.sleep(1)

    def wait_synced(self, timeout: float = 30) -> None:
        if not self._synced.wait(timeout):
            raise RuntimeError("the Kubernetes API did not answer the pod list")

    def labelled(self, label: str, value: str) -> list[dict[str, Any]]:
        """The pods whose ``label`` is ``value``, those being deleted too."""
        return [pod for pod in self.pods.values() if (pod["metadata"].get("labels") or {}).get(label) == value]

    def of(self, deployment: str) -> list[dict[str, Any]]:
        """A version's pods, but those being deleted."""
        return [pod for pod in self.labelled(DEPLOYMENT_LABEL, deployment)
                if not pod["metadata"].get("deletionTimestamp")]

    def wait_for(self, predicate: Callable[[], Any], timeout: float) -> Any:
        """The first truthy value of ``predicate`` (called on every change), or None after ``timeout``."""
        with self.changed:
            return self.changed.wait_for(predicate, timeout)

    def close(self) -> None:
        self._stopped.set()
        if self._watch is not None:
            self._watch.stop()
