"""An OpenFaaS gateway **test double** (no real gateway can run here), on faas-netes.

It checks each request against the gateway's published API description (:mod:`.schema`) and
refuses what the gateway and faas-netes refuse (unknown fields, bad names, a namespace the
provider does not manage, a secret that does not exist, an unknown Profile, missing basic auth),
and behaves as they do where Modelhall depends on it:

- ``POST /system/scale-function/{name}`` is clamped to 1–5 replicas (gateway/scaling/ranges.go);
- ``/function/{name}[.{namespace}]/…`` proxies to a ready replica; at zero available replicas it
  scales from zero as the gateway does (status → scale to ``com.openfaas.scale.min`` or 1 → poll
  until ``availableReplicas > 0``) while it holds the request;
- each replica is a local process running the function's image command (``images`` maps an image
  to the command its container would run) with the function's environment, plus ``port`` (the
  port this replica listens on, as of-watchdog's ``port`` variable) and ``MODELHALL_SECRETS_DIR``
  (where ``/var/openfaas/secrets`` is for it); it is *available* once ``GET /_/health`` answers
  200, as faas-netes' readiness probe asks;
- a replica whose ``constraints`` match no node stays pending, as an unschedulable pod does;
- the functions are Deployments in the functions namespace: the Kubernetes API's
  ``deployments/{name}/scale`` subresource (``GET``, merge ``PATCH``) reads and sets the same
  replicas, to 0 too. (This part stands in for ``tests/kubernetes_double`` until that holds the
  functions' Deployments.)

``readOnlyRootFilesystem`` and resource limits are recorded, not enforced: no container runs here.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
import yaml
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from openfaas_double.schema import (
    CONSTRAINT,
    DeleteFunctionRequest,
    FunctionDeployment,
    ScalePatch,
    ScaleServiceRequest,
    Secret,
)

CE_MIN_REPLICAS, CE_MAX_REPLICAS = 1, 5
POLL_SECONDS = 0.05  # the gateway's function poll interval (it is configurable there too)
MAX_POLLS = 2400  # ×0.05 s: two minutes, then the held invocation fails
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "host", "content-length"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Replica:
    port: int
    process: subprocess.Popen[bytes] | None  # None: pending, no node fits
    log: Path
    ready: bool = False

    def available(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            return False
        if not self.ready:
            try:
                self.ready = httpx.get(f"http://127.0.0.1:{self.port}/_/health", timeout=0.5).status_code == 200
            except httpx.HTTPError:
                return False
        return self.ready

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@dataclass
class Function:
    deployment: FunctionDeployment
    namespace: str
    replicas: int = 0
    pods: list[Replica] = field(default_factory=list)
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
    """The gateway on ``url`` (and faas-netes' Deployments behind it), in a thread of the test process."""

    def __init__(self, images: Mapping[str, list[str]], username: str = "admin", password: str = "secret",
                 namespaces: tuple[str, ...] = ("openfaas-fn",), profiles: tuple[str, ...] = (),
                 nodes: tuple[Mapping[str, str], ...] = ({"kubernetes.io/os": "linux"},)):
        self.images, self.username, self.password = dict(images), username, password
        self.namespaces, self.profiles, self.nodes = namespaces, profiles, nodes
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.functions: dict[tuple[str, str], Function] = {}
        self.secrets: dict[tuple[str, str], bytes] = {}
        self.requests: list[tuple[str, str, Any]] = []  # (method, path, JSON body) of every /system and /apis call
        self.lock = threading.RLock()
        self.root = Path(tempfile.mkdtemp(prefix="openfaas-double-"))
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
        with self.lock:
            for function in self.functions.values():
                self._set_replicas(function, 0)
        self.server.should_exit = True
        self.thread.join(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)

    def write_kubeconfig(self, path: Path) -> Path:
        """A kubeconfig for the Kubernetes side of this double (what the registry's client loads)."""
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "faas-netes",
            "clusters": [{"name": "faas-netes", "cluster": {"server": self.url}}],
            "users": [{"name": "registry", "user": {"token": "registry-token"}}],
            "contexts": [{"name": "faas-netes", "context": {"cluster": "faas-netes", "user": "registry"}}]}))
        return path

    def function(self, name: str, namespace: str = "openfaas-fn") -> Function | None:
        with self.lock:
            return self.functions.get((namespace, name))

    def processes(self, name: str, namespace: str = "openfaas-fn") -> list[int]:
        """The pids of the function's running replicas."""
        function = self.function(name, namespace)
        return [pod.process.pid for pod in (function.pods if function else [])
                if pod.process is not None and pod.process.poll() is None]

    # --- state -------------------------------------------------------------------------

    def _schedulable(self, deployment: FunctionDeployment) -> bool:
        wanted = [CONSTRAINT.fullmatch(c) for c in deployment.constraints or []]
        return any(all(node.get(m["key"]) == m["value"] for m in wanted if m) for node in self.nodes)

    def _start_replica(self, function: Function) -> Replica:
        port = _free_port()
        log = self.root / f"{function.deployment.service}-{port}.log"
        if not self._schedulable(function.deployment):
            return Replica(port, None, log)
        secrets = self.root / f"secrets-{port}"
        secrets.mkdir()
        for name in function.deployment.secrets or []:
            (secrets / name).write_bytes(self.secrets[(function.namespace, name)])
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **(function.deployment.envVars or {}),
               "port": str(port), "MODELHALL_SECRETS_DIR": str(secrets)}
        with log.open("ab") as out:
            process = subprocess.Popen(self.images[function.deployment.image], env=env, stdout=out,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=secrets,
                                       start_new_session=True)
        return Replica(port, process, log)

    def _set_replicas(self, function: Function, replicas: int) -> None:
        function.replicas = replicas
        while len(function.pods) > replicas:
            function.pods.pop().stop()
        while len(function.pods) < replicas:
            function.pods.append(self._start_replica(function))

    def _status(self, function: Function) -> dict[str, Any]:
        deployment = function.deployment
        return {**deployment.model_dump(exclude_none=True, exclude={"registryAuth", "network"}),
                "name": deployment.service, "namespace": function.namespace, "replicas": function.replicas,
                "availableReplicas": sum(pod.available() for pod in function.pods),
                "invocationCount": function.invocations, "createdAt": function.created_at}

    # --- the API -----------------------------------------------------------------------

    def _app(self) -> Starlette:
        system = [Route("/system/functions", self._functions, methods=["GET", "POST", "PUT", "DELETE"]),
                  Route("/system/function/{name}", self._function_status, methods=["GET"]),
                  Route("/system/scale-function/{name}", self._scale, methods=["POST"]),
                  Route("/system/secrets", self._secrets, methods=["GET", "POST", "PUT", "DELETE"]),
                  Route("/system/logs", self._logs, methods=["GET"]),
                  Route("/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale", self._kubernetes_scale,
                        methods=["GET", "PATCH"])]
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
        if not self._authorised(request) and not request.url.path.startswith("/apis/"):
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
            self._set_replicas(self.functions.pop(key), 0)
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
            self._set_replicas(function, function.min_replicas)
            return Response(status_code=202)
        if existing is None:
            raise Refused(404, f"function {deployment.service} not found")
        replicas = existing.replicas  # an update keeps the replicas, replacing every pod
        self._set_replicas(existing, 0)
        existing.deployment = deployment
        self._set_replicas(existing, replicas)
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
            if request.method == "DELETE":
                if self.secrets.pop(key, None) is None:
                    raise Refused(404, f"secret {secret.name} not found")
                return Response(status_code=204)
            if (secret.value is None) == (secret.rawValue is None):
                raise Refused(400, "a secret has a value or a rawValue")
            value = secret.value.encode() if secret.value is not None else base64.b64decode(secret.rawValue or "")
            if request.method == "POST":
                if key in self.secrets:
                    raise Refused(409, f"secret {secret.name} already exists")
                self.secrets[key] = value
                return Response(status_code=201)
            if key not in self.secrets:
                raise Refused(404, f"secret {secret.name} not found")
            self.secrets[key] = value
            return Response(status_code=200)
        return await self._guarded(request, secrets)

    async def _logs(self, request: Request) -> Response:
        async def logs(request: Request) -> Response:
            key = (self._namespace(request.query_params.get("namespace")), request.query_params.get("name", ""))
            function = self.functions.get(key)
            if function is None:
                raise Refused(404, "function not found")
            tail = int(request.query_params.get("tail", "0"))
            lines = [line for pod in function.pods if pod.log.exists()
                     for line in pod.log.read_text(errors="replace").splitlines()]
            entries = [{"name": key[1], "namespace": key[0], "instance": str(index), "timestamp": "",
                        "text": line} for index, line in enumerate(lines[-tail:] if tail > 0 else lines)]
            return PlainTextResponse("".join(json.dumps(entry) + "\n" for entry in entries),
                                     media_type="application/x-ndjson")
        return await self._guarded(request, logs)

    async def _kubernetes_scale(self, request: Request) -> Response:
        async def scale(request: Request) -> Response:
            namespace, name = request.path_params["namespace"], request.path_params["name"]
            function = self.functions.get((namespace, name))
            if function is None:
                return JSONResponse({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
                                     "message": f'deployments.apps "{name}" not found', "code": 404}, status_code=404)
            if request.method == "PATCH":
                if request.headers.get("content-type", "").split(";")[0] not in (
                        "application/merge-patch+json", "application/strategic-merge-patch+json"):
                    raise Refused(415, "a Scale is patched with a merge patch here")
                self._set_replicas(function, (await self._body(request, ScalePatch)).spec.replicas)
            return JSONResponse({"kind": "Scale", "apiVersion": "autoscaling/v1",
                                 "metadata": {"name": name, "namespace": namespace},
                                 "spec": {"replicas": function.replicas},
                                 "status": {"replicas": function.replicas, "selector": f"faas_function={name}"}})
        return await self._guarded(request, scale)

    # --- invocations ---------------------------------------------------------------------

    def _find(self, target: str) -> Function | None:
        name, _, namespace = target.partition(".")
        with self.lock:
            return self.functions.get((namespace or self.namespaces[0], name))

    def _ready_pod(self, function: Function) -> Replica | None:
        with self.lock:
            ready = [pod for pod in function.pods if pod.available()]
            return ready[function.invocations % len(ready)] if ready else None

    def _scale_from_zero(self, function: Function) -> Replica | None:
        """As the gateway's FunctionScaler: at 0 available, scale to the min label (or 1), then poll."""
        with self.lock:
            if not any(pod.available() for pod in function.pods) and function.replicas == 0:
                self._set_replicas(function, function.min_replicas)
        for _ in range(MAX_POLLS):
            pod = self._ready_pod(function)
            if pod is not None:
                return pod
            time.sleep(POLL_SECONDS)
        return None

    async def _invoke(self, request: Request) -> Response:
        function = self._find(request.path_params["target"])
        if function is None:
            return PlainTextResponse("error finding function", status_code=404)
        pod = await asyncio.to_thread(self._scale_from_zero, function)
        if pod is None:
            return PlainTextResponse("unable to scale function from zero", status_code=500)
        with self.lock:
            function.invocations += 1
        client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{pod.port}", timeout=None)
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

