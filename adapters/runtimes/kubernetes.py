"""The Kubernetes runtime (``MODELHALL_RUNTIME=kubernetes``): each version a Deployment, each worker a pod.

A version is one Deployment in ``MODELHALL_K8S_NAMESPACE``, ``replicas: 0`` while it sleeps, labelled
with the platform, its repository id and its digest, and owning what it needs: a Secret with its
version pull token and a NetworkPolicy (deleting the Deployment deletes them, by owner references).
Its pods run the model-server image (``MODELHALL_K8S_IMAGE``), whose entry
(``python -m modelhall.showcase.bootstrap``) fetches the bundle by digest from the registry and serves
it on the pod's address.

- **start** makes sure the Deployment exists, raises its ``scale`` to one more pod than this registry
  uses (``scaling.min`` at a wake), and follows the pods with a watch (one per runtime, kept as a local
  cache) until one it has not handed out is Ready; its address is the worker's endpoint. A pod the
  scheduler cannot place for ``MODELHALL_K8S_UNSCHEDULABLE_WAIT`` seconds is given up (the scale goes
  back) and the scheduler's message becomes the deployment's ``unschedulable`` reason.
- **stop** marks the pod cheapest to delete (``controller.kubernetes.io/pod-deletion-cost``) and lowers
  the scale by one, so the ReplicaSet removes that pod and no other.
- **alive** reads the cache: the pod is there, the same one, and its container has not restarted since.
- A restarted registry adopts Ready pods: ``start`` hands out a Ready pod it finds before asking for more.
- **build** gives the image's packages, or the environment artifact a Job built for the version's
  requirements (``kubernetes_builds.py``); its pods fetch that artifact by digest.
- A GPU pod the scheduler cannot place, with ``resources.gpu.cpu_fallback``, gets the CPU pod template.

Pods are hardened (non-root, read-only root with an ``emptyDir`` ``/tmp``, no privilege escalation, no
capabilities, seccomp ``RuntimeDefault``, no service-account token) and sized by ``resources``; GPUs
become ``nvidia.com/gpu`` limits, a node selector on ``nvidia.com/gpu.product``, the GPU toleration and
runtime class.
"""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from modelhall.adapters.runtimes.base import Build, EnvironmentArtifacts, Target, UnschedulableError, WorkerHandle
from modelhall.adapters.runtimes.kubernetes_builds import EnvironmentJobs
from modelhall.adapters.runtimes.kubernetes_pods import (
    CONTAINER_SECURITY,
    DEPLOYMENT_LABEL,
    MANAGED_BY,
    PLATFORM,
    POD_SECURITY,
    PodCache,
    connect,
    read_pod_log,
)
from modelhall.registry.auth.tokens import issue_version_pull_token
from modelhall.settings import Settings
from modelhall.spec import Spec, load_spec_file

REPOSITORY_LABEL = "modelhall.io/repository-id"
DIGEST_LABEL = "modelhall.io/digest"  # the digest's first 63 hex digits (a label value's limit); in full in an annotation
DIGEST_ANNOTATION = "modelhall.io/digest"
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
GPU = "nvidia.com/gpu"
GPU_PRODUCT = "nvidia.com/gpu.product"
BOOTSTRAP = ["python", "-m", "modelhall.showcase.bootstrap"]
STARTUP_PERIOD_SECONDS = 2
MERGE_PATCH = "application/merge-patch+json"


class NoNodeError(UnschedulableError):
    """No pod of the version became ready in time."""


class UnplaceableError(NoNodeError):
    """The scheduler found no node for the version's pod (its message says why)."""


class NetworkNotAllowedError(UnschedulableError):
    """The spec asks for network access, which this registry's operator has not allowed."""


def deployment_name(target: Target) -> str:
    """``mh-<repository id>-<digest's first 16 hex digits>``: a DNS-1123 name, one per version."""
    return f"mh-{target.repository_id}-{target.digest.split(':')[-1][:16]}"


def quantity(number: float) -> str:
    """CPUs as Kubernetes writes them (``500m``, ``2``)."""
    milli = math.ceil(number * 1000)
    return f"{milli // 1000}" if milli % 1000 == 0 else f"{milli}m"


def is_ready(pod: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def unschedulable_message(pod: dict[str, Any]) -> str | None:
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False" \
                and condition.get("reason") == "Unschedulable":
            return str(condition.get("message") or "the scheduler found no node for the pod")
    return None


def restarts(pod: dict[str, Any]) -> int:
    return sum(status.get("restartCount", 0) for status in (pod.get("status") or {}).get("containerStatuses") or [])


class KubernetesRuntime:
    def __init__(self, settings: Settings, artifacts: EnvironmentArtifacts):
        self.settings = settings
        self.namespace = settings.k8s_namespace
        if not settings.k8s_image:
            raise ValueError("MODELHALL_RUNTIME=kubernetes needs MODELHALL_K8S_IMAGE, the model-server image")
        self.registry_url = (settings.k8s_registry_url or settings.url).rstrip("/")
        api_client = connect(settings.k8s_kubeconfig)
        self.apps = client.AppsV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        self.networking = client.NetworkingV1Api(api_client)
        self.pods = PodCache(self.core, self.namespace)
        self.environments = EnvironmentJobs(api_client, settings, self.namespace, self.registry_url, self.pods,
                                            artifacts)
        self._handed: dict[str, set[str]] = {}  # deployment → pods this registry uses
        self._claims: dict[str, int] = {}  # deployment → starts waiting for a pod now
        self._locks: dict[str, threading.Lock] = {}

    def close(self) -> None:
        self.pods.close()

    # --- environments -------------------------------------------------------------------------

    def build(self, bundle: Path, target: Target) -> Build:
        """The version's environment: the model-server image's packages, or an artifact a Job built."""
        return self.environments.build(bundle, target)

    def build_log(self, environment: str, lines: int = 200) -> str:
        return self.environments.log(environment, lines)

    # --- the version's objects ----------------------------------------------------------------

    def _lock(self, name: str) -> threading.Lock:
        return self._locks.setdefault(name, threading.Lock())

    def _labels(self, target: Target, name: str) -> dict[str, str]:
        return {MANAGED_BY: PLATFORM, DEPLOYMENT_LABEL: name, REPOSITORY_LABEL: str(target.repository_id),
                DIGEST_LABEL: target.digest.split(":")[-1][:63]}

    def _network(self, spec: Spec) -> bool:
        if not spec.runtime.network:
            return False
        if not self.settings.allow_model_network:
            raise NetworkNotAllowedError("the model asks for network access (runtime.network: true), which this "
                                         "registry does not allow (its operator can, with "
                                         "MODELHALL_ALLOW_MODEL_NETWORK=true)")
        return True

    def _gpu_placement(self, spec: Spec) -> dict[str, Any]:
        """What a pod needs to land on a GPU node: limits, node selector, toleration, runtime class."""
        gpu = spec.resources.gpu
        if gpu.count == 0:
            return {}
        placement: dict[str, Any] = {"limits": {GPU: str(gpu.count)}}
        if gpu.type:
            placement["nodeSelector"] = {GPU_PRODUCT: self.settings.k8s_gpu_products.get(gpu.type.lower(), gpu.type)}
        if self.settings.k8s_gpu_toleration:
            placement["tolerations"] = [dict(self.settings.k8s_gpu_toleration)]
        if self.settings.k8s_gpu_runtime_class:
            placement["runtimeClassName"] = self.settings.k8s_gpu_runtime_class
        return placement

    def deployment_manifest(self, spec: Spec, target: Target, root_path: str, gpu: bool = True,
                            environment: str | None = None) -> dict[str, Any]:
        """The version's Deployment (``replicas: 0``); ``gpu=False`` is the CPU fallback's; ``environment``
        the digest of the environment artifact its pods fetch, if the image's packages are not enough."""
        name = deployment_name(target)
        labels = self._labels(target, name)
        resources = spec.resources
        placement = self._gpu_placement(spec) if gpu else {}
        port = self.settings.k8s_model_port
        memory = str(resources.memory)
        probe = {"httpGet": {"path": "/healthz", "port": port}, "timeoutSeconds": 2}
        container = {
            "name": "model", "image": self.settings.k8s_image, "command": BOOTSTRAP,
            "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
            "env": [
                {"name": "MODELHALL_REGISTRY_URL", "value": self.registry_url},
                {"name": "MODELHALL_REPOSITORY", "value": target.repository},
                {"name": "MODELHALL_DIGEST", "value": target.digest},
                {"name": "MODELHALL_ROOT_PATH", "value": root_path},
                {"name": "MODELHALL_PORT", "value": str(port)},
                {"name": "MODELHALL_POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "MODELHALL_PULL_TOKEN", "valueFrom": {"secretKeyRef": {"name": name, "key": "token"}}},
                {"name": "HF_HUB_OFFLINE", "value": "0" if spec.runtime.network else "1"},
                {"name": "GRADIO_ANALYTICS_ENABLED", "value": "False"},
                {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
                {"name": "HOME", "value": "/tmp"},
                {"name": "TMPDIR", "value": "/tmp"},
                {"name": "GRADIO_TEMP_DIR", "value": "/tmp/gradio"},
                *([{"name": "MODELHALL_ENVIRONMENT", "value": environment}] if environment else []),
            ],
            "resources": {"requests": {"cpu": quantity(resources.cpu), "memory": memory},
                          "limits": {"cpu": quantity(resources.cpu), "memory": memory,
                                     **placement.get("limits", {})}},
            # a large model may take long to load (pods killed mid-download otherwise: kserve#3795)
            "startupProbe": {**probe, "periodSeconds": STARTUP_PERIOD_SECONDS,
                             "failureThreshold": max(1, math.ceil(spec.runtime.startup_timeout
                                                                  / STARTUP_PERIOD_SECONDS))},
            "readinessProbe": {**probe, "periodSeconds": 2, "failureThreshold": 3},
            "securityContext": CONTAINER_SECURITY,
            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
        }
        pod_spec: dict[str, Any] = {
            "containers": [container],
            "automountServiceAccountToken": False, "enableServiceLinks": False,
            "securityContext": POD_SECURITY,
            "terminationGracePeriodSeconds": 10,
            "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": str(resources.disk)}}],
            **{key: value for key, value in placement.items() if key != "limits"},
        }
        return {"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": name, "labels": labels, "annotations": {DIGEST_ANNOTATION: target.digest}},
                "spec": {"replicas": 0, "selector": {"matchLabels": {DEPLOYMENT_LABEL: name}},
                         "template": {"metadata": {"labels": labels,
                                                   "annotations": {DIGEST_ANNOTATION: target.digest}},
                                      "spec": pod_spec}}}

    def network_policy(self, name: str, labels: dict[str, str], open_egress: bool) -> dict[str, Any]:
        """Traffic in only from the registry's pods; out only to the registry and DNS (unless network is allowed)."""
        registry = {"namespaceSelector": {"matchLabels": {
                        "kubernetes.io/metadata.name": self.settings.k8s_registry_namespace}},
                    "podSelector": {"matchLabels": dict(self.settings.k8s_registry_labels)}}
        dns = {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}}],
               "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}
        egress = [{}] if open_egress else [{"to": [registry]}, dns]
        return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": name, "labels": labels},
                "spec": {"podSelector": {"matchLabels": {DEPLOYMENT_LABEL: name}}, "policyTypes": ["Ingress", "Egress"],
                         "ingress": [{"from": [registry], "ports": [{"protocol": "TCP",
                                                                     "port": self.settings.k8s_model_port}]}],
                         "egress": egress}}

    def _secret(self, name: str, labels: dict[str, str], target: Target, owner: list[dict[str, Any]],
                environment: str | None) -> dict[str, Any]:
        """The version pull token: the bundle's manifest and, if there is one, its environment artifact."""
        token = issue_version_pull_token(self.settings.signing_key, target.repository,
                                         [target.digest, *([environment] if environment else [])],
                                         self.settings.k8s_pull_token_ttl)
        return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": name, "labels": labels, "ownerReferences": owner},
                "stringData": {"token": token}}

    def _ensure(self, spec: Spec, target: Target, root_path: str, environment: str | None) -> dict[str, Any]:
        """The version's Deployment, created with its Secret and NetworkPolicy if new; the token renewed at a wake."""
        name = deployment_name(target)
        try:
            deployment = self.apps.read_namespaced_deployment(name, self.namespace, _preload_content=False)
            found: dict[str, Any] = json.loads(deployment.data)
        except ApiException as error:
            if error.status != 404:
                raise
            manifest = self.deployment_manifest(spec, target, root_path, environment=environment)
            created = self.apps.create_namespaced_deployment(self.namespace, manifest)
            found = {"metadata": {"uid": created.metadata.uid}, "spec": {"replicas": 0}}
        owner = [{"apiVersion": "apps/v1", "kind": "Deployment", "name": name, "uid": found["metadata"]["uid"],
                  "controller": True, "blockOwnerDeletion": True}]
        labels = self._labels(target, name)
        secret = self._secret(name, labels, target, owner, environment)
        if not found["spec"].get("replicas"):  # asleep: a fresh token for this wake
            try:
                self.core.replace_namespaced_secret(name, self.namespace, secret)
            except ApiException as error:
                if error.status != 404:
                    raise
                self.core.create_namespaced_secret(self.namespace, secret)
        policy = self.network_policy(name, labels, self._network(spec))
        policy["metadata"]["ownerReferences"] = owner
        try:
            self.networking.create_namespaced_network_policy(self.namespace, policy)
        except ApiException as error:
            if error.status != 409:
                raise
        return found

    def _fall_back_to_cpu(self, spec: Spec, target: Target, root_path: str, environment: str | None) -> bool:
        """Give the version's Deployment the pod template without GPUs, and as many replicas as are wanted
        now, if it has the GPU one still. The scheduler, not the registry, has said that no GPU node fits:
        the registry's Role is namespaced, it may not read nodes. It stays on CPU nodes until the
        Deployment is made again."""
        name = deployment_name(target)
        with self._lock(name):
            deployment: dict[str, Any] = json.loads(
                self.apps.read_namespaced_deployment(name, self.namespace, _preload_content=False).data)
            [container] = deployment["spec"]["template"]["spec"]["containers"]
            if GPU not in container["resources"].get("limits", {}):
                return False
            deployment["spec"]["template"] = self.deployment_manifest(spec, target, root_path, gpu=False,
                                                                      environment=environment)["spec"]["template"]
            deployment["spec"]["replicas"] = len(self._handed.get(name, ())) + self._claims[name]
            self.apps.replace_namespaced_deployment(name, self.namespace, deployment)
        return True

    def _scale(self, name: str, replicas: int) -> None:
        self.apps.patch_namespaced_deployment_scale(name, self.namespace, {"spec": {"replicas": replicas}},
                                                    _content_type=MERGE_PATCH)

    # --- workers ------------------------------------------------------------------------------

    def start(self, bundle: Path, build: Build, target: Target, root_path: str) -> WorkerHandle:
        spec = load_spec_file(bundle)
        self._network(spec)  # refused before anything is created
        name = deployment_name(target)
        self.pods.wait_synced()
        with self._lock(name):
            found = self._ensure(spec, target, root_path, build.artifact)
            handed = self._handed.setdefault(name, set())
            handed &= {pod["metadata"]["name"] for pod in self.pods.of(name)}
            self._claims[name] = claims = self._claims.get(name, 0) + 1
            wanted = len(handed) + claims if handed else max(claims, spec.scaling.min)
            if found["spec"].get("replicas", 0) < wanted:
                self._scale(name, wanted)
        try:
            try:
                return self._wait_for_pod(spec, name, handed)
            except UnplaceableError:
                if not (spec.resources.gpu.count and spec.resources.gpu.cpu_fallback
                        and self._fall_back_to_cpu(spec, target, root_path, build.artifact)):
                    raise
                return self._wait_for_pod(spec, name, handed)
        finally:
            with self._lock(name):
                self._claims[name] -= 1

    def _wait_for_pod(self, spec: Spec, name: str, handed: set[str]) -> WorkerHandle:
        deadline = time.monotonic() + spec.runtime.startup_timeout + self.settings.k8s_unschedulable_wait
        pending_since: dict[str, float] = {}

        def chosen() -> dict[str, Any] | str | None:
            """A Ready pod not handed out; a pod that has crashed (its handle fails the registry's checks); the
            scheduler's message once a pod has been unplaceable for the wait."""
            candidates = [pod for pod in self.pods.of(name) if pod["metadata"]["name"] not in handed]
            for pod in candidates:
                if is_ready(pod) or restarts(pod) > 0:
                    return pod
            for pod in candidates:
                message = unschedulable_message(pod)
                if message is None:
                    continue
                since = pending_since.setdefault(pod["metadata"]["name"], time.monotonic())
                if time.monotonic() - since >= self.settings.k8s_unschedulable_wait:
                    return message
            return None

        while True:
            left = deadline - time.monotonic()
            found = self.pods.wait_for(chosen, timeout=min(max(left, 0), 1.0))
            with self._lock(name):
                if isinstance(found, dict) and found["metadata"]["name"] not in handed:
                    handed.add(found["metadata"]["name"])
                    return self._handle(found)
                if isinstance(found, str) or left <= 0:
                    self._scale(name, len(handed) + self._claims[name] - 1)  # the pending pod does not linger
                    break
        if isinstance(found, str):
            raise UnplaceableError(f"no node can run the model: {found}")
        raise NoNodeError(f"no pod of the model became ready within {spec.runtime.startup_timeout:g} s")

    def _handle(self, pod: dict[str, Any]) -> WorkerHandle:
        meta = pod["metadata"]
        ip = pod["status"].get("podIP", "")
        host = f"[{ip}]" if ":" in ip else ip
        return WorkerHandle(f"{meta['name']}/{meta['uid']}/{restarts(pod)}",
                            f"http://{host}:{self.settings.k8s_model_port}")

    @staticmethod
    def _parts(worker: WorkerHandle) -> tuple[str, str, int]:
        name, uid, count = worker.id.split("/")
        return name, uid, int(count)

    def alive(self, worker: WorkerHandle) -> bool:
        name, uid, count = self._parts(worker)
        self.pods.wait_synced()
        pod = self.pods.pods.get(name)
        alive = (pod is not None and pod["metadata"]["uid"] == uid and not pod["metadata"].get("deletionTimestamp")
                 and restarts(pod) == count and (pod.get("status") or {}).get("phase") == "Running")
        if alive and pod is not None:  # a handle the registry holds (adopted after a restart, say) is in use
            deployment = pod["metadata"]["labels"][DEPLOYMENT_LABEL]
            if name not in self._handed.setdefault(deployment, set()):
                with self._lock(deployment):
                    self._handed[deployment].add(name)
        return alive

    def stop(self, worker: WorkerHandle) -> None:
        pod_name, uid, _ = self._parts(worker)
        pod = self.pods.pods.get(pod_name)
        if pod is None or pod["metadata"]["uid"] != uid:
            return
        name = pod["metadata"]["labels"][DEPLOYMENT_LABEL]
        with self._lock(name):
            self._handed.get(name, set()).discard(pod_name)
            try:
                self.core.patch_namespaced_pod(pod_name, self.namespace,
                                               {"metadata": {"annotations": {DELETION_COST: "-1000"}}},
                                               _content_type=MERGE_PATCH)
                scale = self.apps.read_namespaced_deployment_scale(name, self.namespace)
                self._scale(name, max(0, (scale.spec.replicas or 0) - 1))
            except ApiException as error:
                if error.status != 404:
                    raise
        self.pods.wait_for(lambda: pod_name not in self.pods.pods, timeout=15)

    def logs(self, worker: WorkerHandle, lines: int = 50) -> str:
        name, _, _ = self._parts(worker)
        return read_pod_log(self.core, self.namespace, name, lines)

    def remove(self, target: Target) -> None:
        """Delete a version's Deployment; its pods, Secret and NetworkPolicy go with it (owner references)."""
        try:
            self.apps.delete_namespaced_deployment(deployment_name(target), self.namespace,
                                                   propagation_policy="Background")
        except ApiException as error:
            if error.status != 404:
                raise
