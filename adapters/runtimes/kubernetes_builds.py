"""Environments for the Kubernetes runtime: built once per requirements key by a Job, fetched by pods by digest.

A version whose requirements the model-server image satisfies runs on the image's packages. For one
that needs more, the runtime asks the registry for the environment artifact of its requirements key
(``registry/environments.py``, which also adopts one built for another repository). If there is none,
a Job ``modelhall-env-<key>`` builds it (``showcase/build_environment.py``) in a pod hardened as a
model's, with an environment push token (in a Secret the Job owns) that can store that artifact in
the version's repository and nothing else. Its pods are followed through the runtime's pod watch.
A pod of the version then gets the artifact's digest and fetches it with its version pull token:
a start is a download, not an install.

The build runs the requirements' own code (source packages' build backends), so it is fenced like a
model: no service-account token, non-root, read-only root, only ``/tmp`` writable, and a
NetworkPolicy that lets it reach the registry, DNS and a package index (HTTP and HTTPS), nothing in
the cluster else. Build logs come from the Job's pod, through the API.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from modelhall.adapters.runtimes.base import Build, EnvironmentArtifacts, Target
from modelhall.adapters.runtimes.environments import (
    BUILD_SECONDS,
    IMAGE_BUILD,
    UV_PASSTHROUGH,
    EnvironmentBuildError,
    beyond_the_image,
)
from modelhall.adapters.runtimes.kubernetes_pods import (
    CONTAINER_SECURITY,
    MANAGED_BY,
    PLATFORM,
    POD_SECURITY,
    PodCache,
    read_pod_log,
)
from modelhall.registry.auth.tokens import issue_environment_push_token
from modelhall.settings import Settings

ENVIRONMENT_LABEL = "modelhall.io/environment"
BUILD_POLICY = "modelhall-environment-builds"
BUILD_COMMAND = ["python", "-m", "modelhall.showcase.build_environment"]
BUILD_RESOURCES = {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}}
BUILD_DISK = "8Gi"
FINISHED_JOB_SECONDS = 24 * 3600  # a finished Job (and its log) is kept this long
LOG_LINES = 40
# Where a build's author-controlled code could reach what is not a package index: link-local (the cloud
# metadata service at 169.254.169.254) and the private ranges clusters and their services live in.
NOT_AN_INDEX = ("169.254.0.0/16", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "127.0.0.0/8")


def job_name(key: str) -> str:
    return f"modelhall-env-{key}"


def finished(pod: dict[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


class EnvironmentJobs:
    def __init__(self, api_client: client.ApiClient, settings: Settings, namespace: str, registry_url: str,
                 pod_cache: PodCache, artifacts: EnvironmentArtifacts):
        """Jobs in ``namespace`` (the models', or an OpenFaaS functions namespace), followed in ``pod_cache``
        (the runtime's watch of the platform's pods there)."""
        self.batch = client.BatchV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        self.networking = client.NetworkingV1Api(api_client)
        self.settings, self.namespace, self.registry_url = settings, namespace, registry_url
        self.pods, self.artifacts = pod_cache, artifacts
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def build(self, bundle: Path, target: Target) -> Build:
        """The version's environment: the image's packages, or the artifact of its requirements key
        (built now by a Job if no repository has it yet)."""
        _source, needed = beyond_the_image(bundle)
        if not needed.requirements:
            return IMAGE_BUILD
        key = needed.digest
        with self._lock(key):  # one build per key at a time here; replicas share the Job by its name
            found = self.artifacts.find(key, target.repository)
            if found is not None:
                return Build(environment=key, artifact=found,
                             log=f"environment {key} ({', '.join(needed.requirements)}): built before, {found}")
            log = self._run(key, needed.requirements, target)
            found = self.artifacts.find(key, target.repository)
        if found is None:
            raise EnvironmentBuildError(f"the build of environment {key} ended without storing it", log)
        return Build(environment=key, artifact=found, log=log)

    def log(self, key: str, lines: int = 200) -> str:
        """The installer's output, from the newest pod of the environment's Job (while the Job is kept)."""
        pods = self.pods.labelled(ENVIRONMENT_LABEL, key)
        if not pods:
            return ""
        newest = max(pods, key=lambda pod: pod["metadata"].get("creationTimestamp") or "")
        return read_pod_log(self.core, self.namespace, newest["metadata"]["name"], lines)

    def _lock(self, key: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def _run(self, key: str, requirements: tuple[str, ...], target: Target) -> str:
        """Run the key's Job to its end (a failed or stale one is replaced); its log, or the error with it."""
        name = job_name(key)
        self._ensure_policy()
        existing = self._job(name)
        status = (existing or {}).get("status") or {}
        if existing is not None and (status.get("succeeded") or status.get("failed")):
            self._delete_job(name)  # finished before without an artifact this registry can find: build again
            existing = None
        if existing is None:
            self._create(name, key, requirements, target)
        self.pods.wait_synced()
        pod = self.pods.wait_for(lambda: self._finished_pod(key), timeout=BUILD_SECONDS)
        if pod is None:
            raise EnvironmentBuildError(f"the build of environment {key} did not finish within {BUILD_SECONDS:g} s")
        log = read_pod_log(self.core, self.namespace, pod["metadata"]["name"], LOG_LINES)
        if pod["status"]["phase"] != "Succeeded":
            raise EnvironmentBuildError(f"the build of environment {key} failed:\n{log}", log)
        return log

    def _finished_pod(self, key: str) -> dict[str, Any] | None:
        return next((pod for pod in self.pods.labelled(ENVIRONMENT_LABEL, key) if finished(pod)), None)

    def _job(self, name: str) -> dict[str, Any] | None:
        try:
            return self.batch.read_namespaced_job(name, self.namespace).to_dict()
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def _delete_job(self, name: str) -> None:
        try:
            self.batch.delete_namespaced_job(name, self.namespace, propagation_policy="Foreground")
        except ApiException as error:
            if error.status != 404:
                raise
        self.pods.wait_for(lambda: not self.pods.labelled("job-name", name), timeout=60)

    def _create(self, name: str, key: str, requirements: tuple[str, ...], target: Target) -> None:
        labels = {MANAGED_BY: PLATFORM, ENVIRONMENT_LABEL: key,
                  "app.kubernetes.io/component": "environment-build"}
        try:
            created = self.batch.create_namespaced_job(self.namespace, self.job_manifest(name, key, requirements,
                                                                                          target, labels))
        except ApiException as error:
            if error.status == 409:  # another replica started it a moment ago
                return
            raise
        owner = [{"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": created.metadata.uid,
                  "controller": True, "blockOwnerDeletion": True}]
        token = issue_environment_push_token(self.settings.signing_key, target.repository, key,
                                             int(BUILD_SECONDS) + 600)
        secret = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                  "metadata": {"name": name, "labels": labels, "ownerReferences": owner},
                  "stringData": {"token": token}}
        try:
            self.core.create_namespaced_secret(self.namespace, secret)
        except ApiException as error:
            if error.status != 409:
                raise
            self.core.replace_namespaced_secret(name, self.namespace, secret)

    def job_manifest(self, name: str, key: str, requirements: tuple[str, ...], target: Target,
                     labels: dict[str, str]) -> dict[str, Any]:
        """The Job: one pod, never restarted, as fenced as a model's, with the index settings the operator set."""
        index = [{"name": variable, "value": os.environ[variable]} for variable in UV_PASSTHROUGH
                 if variable in os.environ]
        container = {
            "name": "build", "image": self.settings.k8s_image, "command": BUILD_COMMAND,
            "env": [
                {"name": "MODELHALL_REQUIREMENTS", "value": "\n".join(requirements)},
                {"name": "MODELHALL_ENVIRONMENT_KEY", "value": key},
                {"name": "MODELHALL_REGISTRY_URL", "value": self.registry_url},
                {"name": "MODELHALL_REPOSITORY", "value": target.repository},
                {"name": "MODELHALL_PUSH_TOKEN", "valueFrom": {"secretKeyRef": {"name": name, "key": "token"}}},
                {"name": "HOME", "value": "/tmp"},
                {"name": "TMPDIR", "value": "/tmp"},
                *index,
            ],
            "resources": BUILD_RESOURCES,
            "securityContext": CONTAINER_SECURITY,
            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
        }
        pod_spec = {"containers": [container], "restartPolicy": "Never", "automountServiceAccountToken": False,
                    "enableServiceLinks": False, "securityContext": POD_SECURITY,
                    "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": BUILD_DISK}}]}
        return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "labels": labels},
                "spec": {"backoffLimit": 0, "activeDeadlineSeconds": int(BUILD_SECONDS),
                         "ttlSecondsAfterFinished": FINISHED_JOB_SECONDS,
                         "template": {"metadata": {"labels": labels}, "spec": pod_spec}}}

    def _ensure_policy(self) -> None:
        """Builds reach the registry, DNS and a package index on 80/443 outside the cluster's private and
        link-local ranges (no cloud metadata service, no in-cluster service); nothing reaches them. An
        index or proxy inside the cluster needs a NetworkPolicy of the operator's (policies add up)."""
        registry = {"namespaceSelector": {"matchLabels": {
                        "kubernetes.io/metadata.name": self.settings.k8s_registry_namespace}},
                    "podSelector": {"matchLabels": dict(self.settings.k8s_registry_labels)}}
        policy = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                  "metadata": {"name": BUILD_POLICY, "labels": {MANAGED_BY: PLATFORM}},
                  "spec": {"podSelector": {"matchLabels": {"app.kubernetes.io/component": "environment-build"}},
                           "policyTypes": ["Ingress", "Egress"], "ingress": [],
                           "egress": [{"to": [registry]},
                                      {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]},
                                      {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": list(NOT_AN_INDEX)}}],
                                       "ports": [{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 80}]}]}}
        try:
            self.networking.create_namespaced_network_policy(self.namespace, policy)
        except ApiException as error:
            if error.status != 409:
                raise
