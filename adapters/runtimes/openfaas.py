"""The OpenFaaS runtime: each version is one OpenFaaS function, deployed through the gateway's REST API.

    registry ──basic auth──▶ gateway /system/secrets              the version's pull credential
                                     /system/functions            POST deploy, PUT update
                                     /system/function/{name}      status: does it exist, how many replicas
                                     /system/logs                 the function's output
             ──────────────▶ gateway /function/{name}.{namespace}/…  predictions, health, the demo; a function at
                                                                     zero replicas is woken by the gateway itself
             ──(optional)──▶ Kubernetes API  deployments/{name}/scale → 0   scale to zero (faas-netes)

A function is what the registry sees as one worker: its handle is ``{name}.{namespace}`` and its
endpoint the gateway's invocation URL for it. Its replicas are OpenFaaS's business, within the
spec's ``scaling`` written as the labels OpenFaaS Pro's autoscaler reads.

Scale to zero: the Community Edition gateway clamps every ``POST /system/scale-function`` to 1–5
replicas, so it cannot take a function to zero. On faas-netes a function is a Deployment in the
functions namespace, and :meth:`OpenFaaSRuntime.stop` sets its scale to 0 through the Kubernetes
API; the gateway's own scale-from-zero wakes it on the next invocation. With no Kubernetes access an
idle function keeps one replica; with OpenFaaS Pro in charge (``MODELHALL_OPENFAAS_PRO``) its
autoscaler does the scaling and the registry leaves it alone.

The model-server image (``python -m modelhall.showcase.bootstrap``) fetches its bundle by digest from
the registry with the version pull token it reads from the function's secret
(``MODELHALL_PULL_TOKEN_FILE``, under ``/var/openfaas/secrets``), and listens on port 8080.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

from modelhall.adapters.runtimes.base import Build, EnvironmentArtifacts, Target, UnschedulableError, WorkerHandle
from modelhall.adapters.runtimes.environments import IMAGE_BUILD, beyond_the_image
from modelhall.settings import Settings
from modelhall.spec import Spec, load_spec_file

logger = logging.getLogger(__name__)

GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"  # set on GPU nodes by NVIDIA's GPU feature discovery
PROFILE_ANNOTATION = "com.openfaas.profile"
CE_MAX_REPLICAS = 5  # the Community Edition gateway clamps scale requests to 1–5 (gateway/scaling/ranges.go)
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")  # a Kubernetes label value
GATEWAY_TIMEOUT_SECONDS = 30.0
ALIVE_CACHE_SECONDS = 2.0
SECRETS_DIR = "/var/openfaas/secrets"  # where OpenFaaS mounts a function's secrets
FUNCTION_PORT = 8080  # where OpenFaaS expects a function to listen
SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


class NoGPUProfileError(UnschedulableError):
    """The model needs a GPU, and no OpenFaaS Profile that grants one is configured."""


class NetworkNotAllowedError(UnschedulableError):
    """The spec asks for network access, which this registry's operator has not allowed."""


class GatewayError(RuntimeError):
    """The gateway refused a request; ``status`` is its HTTP status, the message its (shortened) answer."""

    def __init__(self, status: int, message: str):
        super().__init__(f"the OpenFaaS gateway answered {status}: {message[:500]}")
        self.status = status


@dataclass(frozen=True)
class OpenFaaSConfig:
    gateway: str  # e.g. http://gateway.openfaas:8080
    username: str
    password: str
    namespace: str  # the functions namespace, e.g. openfaas-fn
    image: str  # the model-server image
    registry_url: str  # where the image fetches bundles from
    gpu_profile: str | None = None  # an OpenFaaS Profile with GPU limits, tolerations, affinity
    gpu_products: Mapping[str, str] = field(default_factory=dict)  # gpu.type short names → product label values
    pro: bool = False  # OpenFaaS Pro's autoscaler scales functions (to zero too)
    allow_network: bool = False


class DeploymentScaler(Protocol):
    """Sets the replicas of a function's Deployment (faas-netes): the way to zero that the gateway lacks."""

    def scale(self, name: str, namespace: str, replicas: int) -> None: ...


class KubernetesScaler:
    """The scale subresource of the functions' Deployments, through the official Kubernetes client.

    The client (a few seconds to import) is loaded on the first scale, not when the registry starts."""

    def __init__(self, kubeconfig: str | None = None):
        self.kubeconfig = kubeconfig  # None: the in-cluster service account, else ~/.kube/config
        self._apps: Any = None

    @property
    def apps(self) -> Any:
        if self._apps is None:
            from kubernetes import client

            self._apps = client.AppsV1Api(self.api_client())
        return self._apps

    def api_client(self) -> Any:
        from modelhall.adapters.runtimes.kubernetes_pods import connect

        return connect(self.kubeconfig)

    def scale(self, name: str, namespace: str, replicas: int) -> None:
        self.apps.patch_namespaced_deployment_scale(name, namespace, {"spec": {"replicas": replicas}})


def open_kubernetes_scaler(kubeconfig: str | None) -> KubernetesScaler | None:
    """Kubernetes access for scale to zero, if the registry has any: the in-cluster service account, or
    a kubeconfig (``kubeconfig``, else ``~/.kube/config``)."""
    in_cluster = kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST") and Path(SERVICE_ACCOUNT_TOKEN).is_file()
    config_file = Path(kubeconfig or os.environ.get("KUBECONFIG", "~/.kube/config").split(os.pathsep)[0]).expanduser()
    return KubernetesScaler(kubeconfig) if in_cluster or config_file.is_file() else None


class Gateway:
    """The OpenFaaS gateway's REST API, as far as the runtime uses it."""

    def __init__(self, url: str, username: str, password: str, namespace: str):
        self.url = url.rstrip("/")
        self.namespace = namespace
        self.http = httpx.Client(base_url=self.url, auth=(username, password), timeout=GATEWAY_TIMEOUT_SECONDS)

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise GatewayError(response.status_code, response.text)
        return response

    def status(self, name: str) -> dict[str, Any] | None:
        """The function's status (``replicas``, ``availableReplicas``, its labels…), or None if there is none."""
        try:
            return self._call("GET", f"/system/function/{name}", params={"namespace": self.namespace}).json()
        except GatewayError as error:
            if error.status == 404:
                return None
            raise

    def deploy(self, function: dict[str, Any]) -> None:
        self._call("POST", "/system/functions", json=function)

    def update(self, function: dict[str, Any]) -> None:
        self._call("PUT", "/system/functions", json=function)

    def delete(self, name: str) -> None:
        """Delete the function, if it is there."""
        self._delete("/system/functions", {"functionName": name, "namespace": self.namespace})

    def delete_secret(self, name: str) -> None:
        self._delete("/system/secrets", {"name": name, "namespace": self.namespace})

    def _delete(self, path: str, body: dict[str, str]) -> None:
        try:
            self._call("DELETE", path, json=body)
        except GatewayError as error:
            if error.status != 404:
                raise

    def put_secret(self, name: str, value: str) -> None:
        """Create the secret, or replace its value if it exists."""
        secret = {"name": name, "namespace": self.namespace, "value": value}
        try:
            self._call("PUT", "/system/secrets", json=secret)
        except GatewayError as error:
            if error.status != 404:
                raise
            self._call("POST", "/system/secrets", json=secret)

    def logs(self, name: str, tail: int) -> list[str]:
        response = self._call("GET", "/system/logs", params={"name": name, "namespace": self.namespace,
                                                             "tail": tail, "follow": "false"})
        lines = []
        for line in response.text.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                lines.append(str(entry.get("text", "")).rstrip("\n"))
        return lines[-tail:]


def function_name(target: Target) -> str:
    """The version's function: the same name for the same version, so a restarted registry finds it again
    (a DNS label, as OpenFaaS requires)."""
    return "mh-" + hashlib.sha256(f"{target.repository_id}@{target.digest}".encode()).hexdigest()[:24]


def gpu_constraints(spec: Spec, products: Mapping[str, str]) -> list[str]:
    """The node selector for ``resources.gpu.type`` (a short name from ``products``, or the label value itself).
    The type is the author's: anything but a label value (a ``,`` or ``=`` that would add selectors of its
    own) is refused."""
    if not spec.resources.gpu.type:
        return []
    gpu_type = products.get(spec.resources.gpu.type, spec.resources.gpu.type)
    if not LABEL_VALUE.fullmatch(gpu_type):
        raise UnschedulableError("resources.gpu.type must be a GPU product name as nodes label it "
                                 f"({GPU_PRODUCT_LABEL}: letters, digits, '-', '_' and '.', at most 63)")
    return [f"{GPU_PRODUCT_LABEL}={gpu_type}"]


def scale_labels(spec: Spec) -> dict[str, str]:
    """What OpenFaaS Pro's autoscaler reads; the gateway's scale-from-zero reads ``com.openfaas.scale.min``."""
    scaling = spec.scaling
    return {"com.openfaas.scale.min": str(max(1, scaling.min)), "com.openfaas.scale.max": str(scaling.max),
            "com.openfaas.scale.zero": "true" if scaling.min == 0 else "false",
            "com.openfaas.scale.zero-duration": f"{int(scaling.idle_timeout)}s"}


class EnvironmentBuilds(Protocol):
    def build(self, bundle: Path, target: Target) -> Build: ...

    def log(self, key: str, lines: int = 200) -> str: ...


class OpenFaaSRuntime:
    def __init__(self, config: OpenFaaSConfig, gateway: Gateway, credentials: Callable[[Target, list[str]], str],
                 scaler: DeploymentScaler | None, environments: Callable[[], EnvironmentBuilds] | None = None):
        """``credentials`` issues the version pull token for a target (and an environment artifact's digest),
        ``scaler`` is the Kubernetes access, if any, and ``environments`` makes what builds environments
        there (Jobs in the functions namespace, as on Kubernetes) the first time a version needs one."""
        self.config = config
        self.gateway = gateway
        self.credentials = credentials
        self.scaler = scaler
        self._environments = environments
        self._builds: EnvironmentBuilds | None = None
        self._seen_alive: dict[str, float] = {}  # function → until when it counts as deployed
        if config.pro:
            logger.warning("OpenFaaS Pro scales the functions: the registry leaves replicas to its autoscaler")
        elif scaler is None:
            logger.warning("no Kubernetes access: idle OpenFaaS functions keep one replica (the Community Edition "
                           "gateway cannot scale a function to zero; give the registry access to the functions' "
                           "Deployments, or use OpenFaaS Pro)")

    def build(self, bundle: Path, target: Target) -> Build:
        """The model-server image's packages, or (with Kubernetes access) an environment artifact built by a
        Job, as on Kubernetes: the same image runs the function and fetches it."""
        source, needed = beyond_the_image(bundle)
        if not needed.requirements:
            return IMAGE_BUILD
        if self._environments is None:
            raise ValueError(f"{source}: {', '.join(needed.requirements)} not in the model-server image; on "
                             "OpenFaaS without Kubernetes access a model may use only the image's packages")
        return self._environment_builds().build(bundle, target)

    def build_log(self, environment: str, lines: int = 200) -> str:
        return self._environment_builds().log(environment, lines) if self._environments else ""

    def _environment_builds(self) -> EnvironmentBuilds:
        assert self._environments is not None
        if self._builds is None:
            self._builds = self._environments()
        return self._builds

    def _check(self, spec: Spec) -> None:
        if spec.runtime.network and not self.config.allow_network:
            raise NetworkNotAllowedError("the model asks for network access (runtime.network: true), which this "
                                         "registry does not allow (its operator can, with "
                                         "MODELHALL_ALLOW_MODEL_NETWORK=true)")
        gpu = spec.resources.gpu
        if gpu.count and not self.config.gpu_profile and not gpu.cpu_fallback:
            raise NoGPUProfileError(
                f"the model needs {gpu.count} GPU(s), and OpenFaaS functions get GPUs only through an OpenFaaS "
                "Profile (OpenFaaS Standard or Enterprise): this registry names none (its operator can, with "
                "MODELHALL_OPENFAAS_GPU_PROFILE); set resources.gpu.cpu_fallback: true to run it on the CPU")
        if spec.scaling.max > CE_MAX_REPLICAS and not self.config.pro:
            logger.warning("%s asks for up to %d replicas (scaling.max); OpenFaaS Community Edition runs at most %d",
                           spec.name, spec.scaling.max, CE_MAX_REPLICAS)

    def function(self, name: str, spec: Spec, target: Target, root_path: str,
                 environment: str | None = None) -> dict[str, Any]:
        """The FunctionDeployment the gateway receives for this version (``environment``: the digest of the
        environment artifact it fetches, if the image's packages are not enough)."""
        gpu = bool(spec.resources.gpu.count and self.config.gpu_profile)
        size = {"cpu": f"{spec.resources.cpu:g}", "memory": str(spec.resources.memory)}
        return {
            "service": name, "namespace": self.config.namespace, "image": self.config.image,
            "envVars": {"MODELHALL_REGISTRY_URL": self.config.registry_url, "MODELHALL_REPOSITORY": target.repository,
                        "MODELHALL_DIGEST": target.digest, "MODELHALL_ROOT_PATH": root_path,
                        "MODELHALL_PULL_TOKEN_FILE": f"{SECRETS_DIR}/{name}-pull", "MODELHALL_PORT": str(FUNCTION_PORT),
                        **({"MODELHALL_ENVIRONMENT": environment} if environment else {})},
            "secrets": [f"{name}-pull"],
            "labels": {"com.modelhall.managed": "true", **scale_labels(spec)},
            "annotations": {"com.modelhall.digest": target.digest,
                            **({PROFILE_ANNOTATION: self.config.gpu_profile} if gpu else {})},
            "constraints": gpu_constraints(spec, self.config.gpu_products) if gpu else [],
            "requests": size, "limits": size, "readOnlyRootFilesystem": True,
        }

    def start(self, bundle: Path, build: Build, target: Target, root_path: str) -> WorkerHandle:
        """Deploy (or update) the version's function with a fresh pull token; the gateway wakes it on the
        first call to its endpoint. The image fetches the bundle (and the environment ``build`` names)."""
        spec = load_spec_file(bundle)
        self._check(spec)
        name = function_name(target)
        function = self.function(name, spec, target, root_path, build.artifact)
        self.gateway.put_secret(f"{name}-pull", self.credentials(target, [build.artifact] if build.artifact else []))
        if self.gateway.status(name) is None:
            self.gateway.deploy(function)
        else:
            self.gateway.update(function)
        return WorkerHandle(f"{name}.{self.config.namespace}", f"{self.gateway.url}/function/{name}.{self.config.namespace}")

    def alive(self, worker: WorkerHandle) -> bool:
        """Whether the function is deployed (at zero replicas it still is: the gateway wakes it).

        Asked on every request: an answer is kept for ``ALIVE_CACHE_SECONDS``. A gateway that does not
        answer says nothing about the function, which counts as alive (its calls will fail on their own)."""
        name = self._name(worker)
        if time.monotonic() < self._seen_alive.get(name, 0.0):
            return True
        try:
            deployed = self.gateway.status(name) is not None
        except (GatewayError, httpx.HTTPError) as error:
            logger.warning("the OpenFaaS gateway could not tell whether %s is deployed: %s", name, error)
            return True
        if deployed:
            self._seen_alive[name] = time.monotonic() + ALIVE_CACHE_SECONDS
        else:
            self._seen_alive.pop(name, None)
        return deployed

    def stop(self, worker: WorkerHandle) -> None:
        """Scale the function's Deployment to zero where the registry may; otherwise it keeps its replica."""
        if self.config.pro or self.scaler is None:
            return
        self.scaler.scale(self._name(worker), self.config.namespace, 0)

    def remove(self, target: Target) -> None:
        """Delete the version's function and its pull secret."""
        name = function_name(target)
        self.gateway.delete(name)
        self.gateway.delete_secret(f"{name}-pull")

    def logs(self, worker: WorkerHandle, lines: int = 50) -> str:
        try:
            return "\n".join(self.gateway.logs(self._name(worker), lines))
        except (GatewayError, httpx.HTTPError) as error:
            return f"(the function's logs could not be read: {error})"

    def _name(self, worker: WorkerHandle) -> str:
        name, _, namespace = worker.id.partition(".")
        if namespace != self.config.namespace:
            raise ValueError("the worker belongs to another functions namespace")
        return name


def open_openfaas_runtime(settings: Settings, artifacts: EnvironmentArtifacts) -> OpenFaaSRuntime:
    """The runtime ``MODELHALL_RUNTIME=openfaas`` configures (see the README's "On OpenFaaS")."""
    from modelhall.registry.auth.tokens import issue_version_pull_token

    config = OpenFaaSConfig(gateway=settings.openfaas_gateway, username=settings.openfaas_username,
                            password=settings.openfaas_password, namespace=settings.openfaas_namespace,
                            image=settings.k8s_image, registry_url=settings.k8s_registry_url or settings.url,
                            gpu_profile=settings.openfaas_gpu_profile, gpu_products=settings.k8s_gpu_products,
                            pro=settings.openfaas_pro, allow_network=settings.allow_model_network)
    if not config.image:
        raise ValueError("MODELHALL_RUNTIME=openfaas needs the model-server image: set MODELHALL_K8S_IMAGE")

    def credentials(target: Target, environments: list[str]) -> str:
        return issue_version_pull_token(settings.signing_key, target.repository, [target.digest, *environments],
                                        settings.k8s_pull_token_ttl)

    scaler = open_kubernetes_scaler(settings.k8s_kubeconfig) if settings.openfaas_kubernetes else None

    def environments() -> EnvironmentBuilds:
        """Jobs in the functions namespace, with the Kubernetes runtime's fencing (loaded on first use)."""
        from kubernetes import client

        from modelhall.adapters.runtimes.kubernetes_builds import EnvironmentJobs
        from modelhall.adapters.runtimes.kubernetes_pods import PodCache

        assert scaler is not None
        api = scaler.api_client()
        return EnvironmentJobs(api, settings, config.namespace, config.registry_url,
                               PodCache(client.CoreV1Api(api), config.namespace), artifacts)

    return OpenFaaSRuntime(config, Gateway(config.gateway, config.username, config.password, config.namespace),
                           credentials, scaler, environments if scaler is not None else None)
