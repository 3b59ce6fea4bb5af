"""An OpenFaaS gateway **test double** (no real gateway can run here), on faas-netes, on the Kubernetes API double.

It checks each request against the gateway's published API description (:mod:`.schema`) and
refuses what the gateway and faas-netes refuse (unknown fields, bad names, a namespace the
provider does not manage, a secret that does not exist, an unknown Profile, missing basic auth),
and behaves as they do where Modelhall depends on it:

- faas-netes keeps each function as a Deployment, and each secret as a Secret, in the functions
  namespace of a :class:`~kubernetes_double.KubernetesDouble` (through the official client, as
  faas-netes talks to its API server): the Deployment has the function's image, environment,
  labels, annotations, requests and limits, ``readOnlyRootFilesystem``, its secrets as one projected
  volume at ``/var/openfaas/secrets``, ``constraints`` as a node selector, a Profile's tolerations,
  and a readiness probe on ``GET /_/health`` port 8080. The Kubernetes double's scheduler places its
  pods (a pod no node fits stays Pending) and its kubelet runs them: ``images`` maps an image to the
  command its container would run. The registry scales a function to zero through that API too;
- ``POST /system/scale-function/{name}`` is clamped to 1–5 replicas (gateway/scaling/ranges.go);
- ``/function/{name}[.{namespace}]/…`` proxies to a ready pod on port 8080; at zero available
  replicas it scales from zero as the gateway does (status → scale to ``com.openfaas.scale.min`` or
  1 → poll until ``availableReplicas > 0``) while it holds the request.

``readOnlyRootFilesystem`` and resource limits are recorded, not enforced: no container runs here.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from kubernetes import client as kubernetes_client
from kubernetes import config as kubernetes_config
from kubernetes.client.rest import ApiException
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from kubernetes_double import KubernetesDouble
from openfaas_double.schema import (
    CONSTRAINT,
    DeleteFunctionRequest,
    FunctionDeployment,
    ScaleServiceRequest,
    Secret,
)

# What the model-server image's container runs, on the Kubernetes double (see model_server_image.py).
MODEL_SERVER_COMMAND = [sys.executable, str(Path(__file__).parent / "model_server_image.py")]
CE_MIN_REPLICAS, CE_MAX_REPLICAS = 1, 5
POLL_SECONDS = 0.05  # the gateway's function poll interval (it is configurable there too)
MAX_POLLS = 2400  # ×0.05 s: two minutes, then the held invocation fails
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "host", "content-length"}
FUNCTION_LABEL = "faas_function"
SECRETS_MOUNT = "/var/openfaas/secrets"
WATCHDOG_PORT = 8080


@dataclass
class Function:
    deployment: FunctionDeployment
    namespace: str
    invocations: int = 0
    created_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    @property
    def min_replicas(self) -> int:
        value = (self.deployment.labels or {}).get("com.openfaas.scale.min", "")
        return int(value) if value.isdigit() and int(value) > 0 else 1


class Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class OpenFaaSGatewayDouble:
    """The gateway on ``url``, with faas-netes' Deployments in ``kubernetes``, in a thread of the test process.

    ``profiles``: OpenFaaS Profiles by name, each the pod spec fields it adds (``tolerations``)."""

    def __init__(self, images: Mapping[str, list[str]], kubernetes: KubernetesDouble, username: str = "admin",
                 password: str = "secret", profiles: Mapping[str, dict[str, Any]] | None = None):
        self.images, self.username, self.password = dict(images), username, password
        self.kubernetes, self.namespaces, self.profiles = kubernetes, (kubernetes.namespace,), dict(profiles or {})
        api = kubernetes_config.new_client_from_config(str(kubernetes.kubeconfig))
        self.apps, self.core = kubernetes_client.AppsV1Api(api), kubernetes_client.CoreV1Api(api)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.kubeconfig = kubernetes.kubeconfig  # what the registry scales functions' Deployments with
        self.functions: dict[tuple[str, str], Function] = {}
        self.requests: list[tuple[str, str, Any]] = []  # (method, path, JSON body) of every /system call
        self.lock = threading.RLock()
        self.server = uvicorn.Server(uvicorn.Config(self._app(), host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    # --- lifecycle -----------------------------------------------------------------

    def start(self) -> OpenFaaSGatewayDouble:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the OpenFaaS gateway double did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def function(self, name: str, namespace: str = "openfaas-fn") -> Function | None:
        with self.lock:
            return self.functions.get((namespace, name))

    def replicas(self, name: str, namespace: str = "openfaas-fn") -> int:
        """The replicas the function's Deployment asks for (0 for a function that is not there)."""
        function = self.function(name, namespace)
        return self._replicas(function) if function else 0

    def processes(self, name: str, namespace: str = "openfaas-fn") -> list[int]:
        """The pids of the function's running replicas (its pods' containers, as the kubelet runs them)."""
        containers = self.kubernetes.cluster.containers
        return [state.process.pid for pod in self._pods(name, namespace)
                if (state := containers.get(pod["metadata"]["uid"])) is not None
                and state.process is not None and state.process.poll() is None]

    @property
    def secrets(self) -> dict[tuple[str, str], bytes]:
        """The functions' secrets, as faas-netes keeps them: a Secret each, its one key the secret's name."""
        found = {}
        for namespace in self.namespaces:
            for secret in self.kubernetes.cluster.store.list("secrets", namespace, "app.kubernetes.io/managed-by=openfaas"):
                name = secret["metadata"]["name"]
                found[(namespace, name)] = base64.b64decode(secret["data"][name])
        return found

    # --- faas-netes -------------------------------------------------------------------

    def _pods(self, name: str, namespace: str) -> list[dict[str, Any]]:
        return [pod for pod in self.kubernetes.cluster.store.list("pods", namespace, f"{FUNCTION_LABEL}={name}")
                if not pod["metadata"].get("deletionTimestamp")]

    def _ready_addresses(self, function: Function) -> list[str]:
        return [pod["status"]["podIP"] for pod in self._pods(function.deployment.service, function.namespace)
                if self.kubernetes.cluster.is_ready(pod)]

    def _replicas(self, function: Function) -> int:
        deployment = self.kubernetes.cluster.store.get("deployments", function.namespace, function.deployment.service)
        return deployment["spec"].get("replicas", 0) if deployment else 0

    def _kubernetes_deployment(self, function: Function, replicas: int) -> dict[str, Any]:
        """The Deployment faas-netes makes of a function."""
        wanted = function.deployment
        name = wanted.service
        labels = {**(wanted.labels or {}), FUNCTION_LABEL: name}
        resources = {kind: {key: value for key, value in (getattr(wanted, kind).model_dump(exclude_none=True)).items()}
                     for kind in ("requests", "limits") if getattr(wanted, kind) is not None}
        container: dict[str, Any] = {
            "name": name, "image": wanted.image, "command": self.images[wanted.image],
            "env": [{"name": key, "value": value} for key, value in (wanted.envVars or {}).items()],
            "ports": [{"name": "http", "containerPort": WATCHDOG_PORT, "protocol": "TCP"}],
            "readinessProbe": {"httpGet": {"path": "/_/health", "port": WATCHDOG_PORT}, "periodSeconds": 2},
            "resources": resources,
            "securityContext": {"readOnlyRootFilesystem": bool(wanted.readOnlyRootFilesystem),
                                "allowPrivilegeEscalation": False},
        }
        pod_spec: dict[str, Any] = {"containers": [container], "enableServiceLinks": False}
        if wanted.secrets:
            volume = f"{name}-projected-secrets"
            container["volumeMounts"] = [{"name": volume, "mountPath": SECRETS_MOUNT, "readOnly": True}]
            pod_spec["volumes"] = [{"name": volume, "projected": {"sources": [
                {"secret": {"name": secret, "items": [{"key": secret, "path": secret}]}} for secret in wanted.secrets]}}]
        selector = {match["key"]: match["value"] for match in map(CONSTRAINT.fullmatch, wanted.constraints or [])
                    if match}
        if selector:
            pod_spec["nodeSelector"] = selector
        for profile in filter(None, (wanted.annotations or {}).get("com.openfaas.profile", "").split(",")):
            for key, value in self.profiles[profile].items():
                pod_spec[key] = [*pod_spec.get(key, []), *value]
        return {"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": name, "labels": labels, "annotations": dict(wanted.annotations or {})},
                "spec": {"replicas": replicas, "selector": {"matchLabels": {FUNCTION_LABEL: name}},
                         "template": {"metadata": {"labels": labels, "annotations": dict(wanted.annotations or {})},
                                      "spec": pod_spec}}}

    def _set_replicas(self, function: Function, replicas: int) -> None:
        self.apps.patch_namespaced_deployment_scale(function.deployment.service, function.namespace,
                                                    {"spec": {"replicas": replicas}})

    def _status(self, function: Function) -> dict[str, Any]:
        deployment = function.deployment
        return {**deployment.model_dump(exclude_none=True, exclude={"registryAuth", "network"}),
                "name": deployment.service, "namespace": function.namespace, "replicas": self._replicas(function),
                "availableReplicas": len(self._ready_addresses(function)),
                "invocationCount": function.invocations, "createdAt": function.created_at}

    # --- the API -----------------------------------------------------------------------

    def _app(self) -> Starlette:
        system = [Route("/system/functions", self._functions, methods=["GET", "POST", "PUT", "DELETE"]),
                  Route("/system/function/{name}", self._function_status, methods=["GET"]),
                  Route("/system/scale-function/{name}", self._scale, methods=["POST"]),
                  Route("/system/secrets", self._secrets, methods=["GET", "POST", "PUT", "DELETE"]),
                  Route("/system/logs", self._logs, methods=["GET"])]
        invoke = [Route("/function/{target}", self._invoke, methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"]),
                  Route("/function/{target}/{path:path}", self._invoke,
                        methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"])]
        return Starlette(routes=[*system, *invoke])

    def _authorised(self, request: Request) -> bool:
        expected = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return request.headers.get("authorization", "") == f"Basic {expected}"

    async def _body(self, request: Request, model: type[BaseModel]) -> Any:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError:
            raise Refused(400, "the request body is not JSON") from None
        self.requests.append((request.method, request.url.path, body))
        try:
            return model.model_validate(body)
        except ValidationError as error:
            raise Refused(400, f"invalid {model.__name__}: {error.errors(include_input=False)}") from None

    def _namespace(self, value: str | None) -> str:
        namespace = value or self.namespaces[0]
        if namespace not in self.namespaces:
            raise Refused(400, f"namespace {namespace} is not managed by OpenFaaS")
        return namespace

    async def _guarded(self, request: Request, handler: Any) -> Response:
        if not self._authorised(request):
            return PlainTextResponse("Unauthorized", status_code=401,
                                     headers={"WWW-Authenticate": 'Basic realm="Restricted"'})
        try:
            with self.lock:
                return await handler(request)
        except Refused as refused:
            return PlainTextResponse(refused.message, status_code=refused.status)

    async def _functions(self, request: Request) -> Response:
        return await self._guarded(request, self._functions_unguarded)

    async def _functions_unguarded(self, request: Request) -> Response:
        if request.method == "GET":
            namespace = self._namespace(request.query_params.get("namespace"))
            return JSONResponse([self._status(f) for (ns, _), f in self.functions.items() if ns == namespace])
        if request.method == "DELETE":
            delete = await self._body(request, DeleteFunctionRequest)
            key = (self._namespace(delete.namespace), delete.functionName)
            if key not in self.functions:
                raise Refused(404, f"function {delete.functionName} not found")
            self.functions.pop(key)
            self.apps.delete_namespaced_deployment(delete.functionName, key[0])  # its pods go with it
            return Response(status_code=200)
        deployment = await self._body(request, FunctionDeployment)
        namespace = self._namespace(deployment.namespace)
        if deployment.image not in self.images:
            raise Refused(400, f"image {deployment.image} cannot be pulled")
        for secret in deployment.secrets or []:
            if (namespace, secret) not in self.secrets:
                raise Refused(400, f"unable to fetch secret: {secret} in namespace {namespace}")
        profile = (deployment.annotations or {}).get("com.openfaas.profile")
        if profile is not None and any(name not in self.profiles for name in profile.split(",")):
            raise Refused(400, f"profile {profile} not found")
        key = (namespace, deployment.service)
        existing = self.functions.get(key)
        if request.method == "POST":
            if existing is not None:
                raise Refused(400, f"function {deployment.service} already exists")
            function = self.functions[key] = Function(deployment, namespace)
            self.apps.create_namespaced_deployment(namespace, self._kubernetes_deployment(function,
                                                                                         function.min_replicas))
            return Response(status_code=202)
        if existing is None:
            raise Refused(404, f"function {deployment.service} not found")
        existing.deployment = deployment  # an update keeps the replicas; the new template replaces every pod
        self.apps.replace_namespaced_deployment(deployment.service, namespace,
                                                self._kubernetes_deployment(existing, self._replicas(existing)))
        return Response(status_code=200)

    async def _function_status(self, request: Request) -> Response:
        async def status(request: Request) -> Response:
            key = (self._namespace(request.query_params.get("namespace")), request.path_params["name"])
            if key not in self.functions:
                raise Refused(404, "function not found")
            return JSONResponse(self._status(self.functions[key]))
        return await self._guarded(request, status)

    async def _scale(self, request: Request) -> Response:
        async def scale(request: Request) -> Response:
            scaling = await self._body(request, ScaleServiceRequest)
            namespace = self._namespace(request.query_params.get("namespace") or scaling.namespace)
            function = self.functions.get((namespace, request.path_params["name"]))
            if function is None:
                raise Refused(404, "function not found")
            self._set_replicas(function, min(max(scaling.replicas, CE_MIN_REPLICAS), CE_MAX_REPLICAS))
            return Response(status_code=202)
        return await self._guarded(request, scale)

    async def _secrets(self, request: Request) -> Response:
        async def secrets(request: Request) -> Response:
            if request.method == "GET":
                namespace = self._namespace(request.query_params.get("namespace"))
                return JSONResponse([{"name": name, "namespace": ns} for ns, name in self.secrets if ns == namespace])
            secret = await self._body(request, Secret)
            key = (self._namespace(secret.namespace), secret.name)
            known = self.secrets
            if request.method == "DELETE":
                if key not in known:
                    raise Refused(404, f"secret {secret.name} not found")
                self.core.delete_namespaced_secret(secret.name, key[0])
                return Response(status_code=204)
            if (secret.value is None) == (secret.rawValue is None):
                raise Refused(400, "a secret has a value or a rawValue")
            value = secret.value.encode() if secret.value is not None else base64.b64decode(secret.rawValue or "")
            body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                    "metadata": {"name": secret.name, "labels": {"app.kubernetes.io/managed-by": "openfaas"}},
                    "data": {secret.name: base64.b64encode(value).decode()}}
            if request.method == "POST":
                if key in known:
                    raise Refused(409, f"secret {secret.name} already exists")
                self.core.create_namespaced_secret(key[0], body)
                return Response(status_code=201)
            if key not in known:
                raise Refused(404, f"secret {secret.name} not found")
            self.core.replace_namespaced_secret(secret.name, key[0], body)
            return Response(status_code=200)
        return await self._guarded(request, secrets)

    async def _logs(self, request: Request) -> Response:
        async def logs(request: Request) -> Response:
            key = (self._namespace(request.query_params.get("namespace")), request.query_params.get("name", ""))
            function = self.functions.get(key)
            if function is None:
                raise Refused(404, "function not found")
            tail = int(request.query_params.get("tail", "0"))
            lines = [line for pod in self._pods(key[1], key[0])
                     for line in self._pod_log(pod["metadata"]["name"], key[0]).splitlines()]
            entries = [{"name": key[1], "namespace": key[0], "instance": str(index), "timestamp": "",
                        "text": line} for index, line in enumerate(lines[-tail:] if tail > 0 else lines)]
            return PlainTextResponse("".join(json.dumps(entry) + "\n" for entry in entries),
                                     media_type="application/x-ndjson")
        return await self._guarded(request, logs)

    def _pod_log(self, pod: str, namespace: str) -> str:
        try:
            return str(self.core.read_namespaced_pod_log(pod, namespace))
        except ApiException:
            return ""  # not started yet

    # --- invocations ---------------------------------------------------------------------

    def _find(self, target: str) -> Function | None:
        name, _, namespace = target.partition(".")
        with self.lock:
            return self.functions.get((namespace or self.namespaces[0], name))

    def _ready_pod(self, function: Function) -> str | None:
        """The address of a ready replica, taking turns."""
        with self.lock:
            ready = self._ready_addresses(function)
            return ready[function.invocations % len(ready)] if ready else None

    def _scale_from_zero(self, function: Function) -> str | None:
        """As the gateway's FunctionScaler: at 0 available, scale to the min label (or 1), then poll."""
        with self.lock:
            if not self._ready_addresses(function) and self._replicas(function) == 0:
                self._set_replicas(function, function.min_replicas)
        for _ in range(MAX_POLLS):
            address = self._ready_pod(function)
            if address is not None:
                return address
            time.sleep(POLL_SECONDS)
        return None

    async def _invoke(self, request: Request) -> Response:
        function = self._find(request.path_params["target"])
        if function is None:
            return PlainTextResponse("error finding function", status_code=404)
        address = await asyncio.to_thread(self._scale_from_zero, function)
        if address is None:
            return PlainTextResponse("unable to scale function from zero", status_code=500)
        with self.lock:
            function.invocations += 1
        client = httpx.AsyncClient(base_url=f"http://{address}:{WATCHDOG_PORT}", timeout=None)
        raw_path = request.scope["raw_path"].decode()  # as the caller encoded it, less /function/{target}
        path = "/" + raw_path.split("/", 3)[3] if raw_path.count("/") >= 3 else "/"
        upstream = client.build_request(request.method, httpx.URL(path + (f"?{request.url.query}" if request.url.query else "")),
                                        content=await request.body(),
                                        headers={k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP})
        try:
            answer = await client.send(upstream, stream=True)
        except httpx.HTTPError:
            await client.aclose()
            return PlainTextResponse("the function did not answer", status_code=502)

        async def close() -> None:
            await answer.aclose()
            await client.aclose()

        return StreamingResponse(answer.aiter_raw(), status_code=answer.status_code,
                                 headers={k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP},
                                 background=BackgroundTask(close))

