"""The double's HTTP side: the REST paths the official ``kubernetes`` client calls, answering as the API server does.

Served: apps/v1 deployments (and their ``scale`` subresource), v1 pods (and their ``log``), secrets and
events, batch/v1 jobs, networking.k8s.io/v1 networkpolicies; create, get, list (label selectors), watch
(a stream of JSON lines from a resourceVersion), replace, patch (JSON patch, merge patch, strategic
merge patch as a merge) and delete. Every refusal is a ``Status`` object with the real code and reason.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from .cluster import Cluster, labels_match, parse_selector
from .schemas import Refused, check_deployment, check_metadata, check_pod_spec, check_schema

KINDS = {  # resource → (kind, apiVersion)
    "deployments": ("Deployment", "apps/v1"),
    "pods": ("Pod", "v1"),
    "secrets": ("Secret", "v1"),
    "events": ("Event", "v1"),
    "jobs": ("Job", "batch/v1"),
    "networkpolicies": ("NetworkPolicy", "networking.k8s.io/v1"),
}
SERVER_FIELDS = ("uid", "resourceVersion", "creationTimestamp", "generation", "namespace", "managedFields")


def _status(error: Refused) -> JSONResponse:
    return JSONResponse(error.status(), status_code=error.code)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge, null removes, everything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def json_patch(target: dict[str, Any], operations: list[dict[str, Any]]) -> dict[str, Any]:
    """RFC 6902's add, replace and remove (what a client sends to a scale or a label)."""
    result = copy.deepcopy(target)
    for operation in operations:
        *parents, last = [part.replace("~1", "/").replace("~0", "~") for part in operation["path"].split("/")[1:]]
        node: Any = result
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        if operation["op"] in ("add", "replace"):
            if isinstance(node, list):
                node.insert(len(node) if last == "-" else int(last), operation["value"])
            else:
                node[last] = operation["value"]
        elif operation["op"] == "remove":
            del node[int(last) if isinstance(node, list) else last]
        else:
            raise Refused(415, "UnsupportedMediaType", f"json patch op {operation['op']!r} is not supported")
    return result


class API:
    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self.store = cluster.store
        self.requests: list[tuple[str, str, str]] = []  # (method, path, query): what the client asked, for tests
        self.received_at: list[float] = []  # perf_counter() at each of them, for benchmarks

    def app(self) -> Starlette:
        routes = []
        for prefix, resources in (("/api/v1", ("pods", "secrets", "events")), ("/apis/apps/v1", ("deployments",)),
                                  ("/apis/batch/v1", ("jobs",)), ("/apis/networking.k8s.io/v1", ("networkpolicies",))):
            for resource in resources:
                base = f"{prefix}/namespaces/{{namespace}}/{resource}"
                routes += [Route(base, self._endpoint(resource, self.collection), methods=["GET", "POST"]),
                           Route(base + "/{name}", self._endpoint(resource, self.item),
                                 methods=["GET", "PUT", "PATCH", "DELETE"])]
        routes += [Route("/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale",
                         self._endpoint("deployments", self.scale), methods=["GET", "PUT", "PATCH"]),
                   Route("/api/v1/namespaces/{namespace}/pods/{name}/log", self._endpoint("pods", self.log),
                         methods=["GET"]),
                   Route("/api/v1/nodes", self.nodes, methods=["GET"])]
        return Starlette(routes=routes)

    def _endpoint(self, resource: str, handler: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            self.received_at.append(time.perf_counter())
            self.requests.append((request.method, request.url.path, request.url.query))
            namespace = request.path_params["namespace"]
            try:
                if namespace not in self.cluster.namespaces:
                    raise Refused(404, "NotFound", f'namespaces "{namespace}" not found',
                                  {"name": namespace, "kind": "namespaces"})
                body = await request.body()
                payload = json.loads(body) if body else None
                return handler(request, resource, namespace, payload)
            except Refused as error:
                return _status(error)
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
                return _status(Refused(400, "BadRequest", f"the request could not be decoded: {error!r}"))
        return endpoint

    def nodes(self, request: Request) -> Response:
        items = [{"apiVersion": "v1", "kind": "Node", "metadata": {"name": node.name, "labels": node.labels},
                  "spec": {"taints": node.taints},
                  "status": {"allocatable": {"cpu": node.cpu, "memory": node.memory,
                                             **({"nvidia.com/gpu": str(node.gpus)} if node.gpus else {})}}}
                 for node in self.cluster.nodes]
        return JSONResponse({"kind": "NodeList", "apiVersion": "v1", "metadata": {}, "items": items})

    # --- validation ------------------------------------------------------------------------

    def _validated(self, resource: str, namespace: str, body: dict[str, Any],
                   previous: dict[str, Any] | None) -> dict[str, Any]:
        kind, api_version = KINDS[resource]
        if not isinstance(body, dict):
            raise Refused(400, "BadRequest", f"the body must be a {kind} object")
        if body.get("kind", kind) != kind or body.get("apiVersion", api_version) != api_version:
            raise Refused(400, "BadRequest", f"the body is a {body.get('apiVersion')}/{body.get('kind')}, "
                                             f"not a {api_version}/{kind}")
        body = {**body, "kind": kind, "apiVersion": api_version}
        metadata = body.setdefault("metadata", {})
        if metadata.get("namespace", namespace) != namespace:
            raise Refused(400, "BadRequest", "the namespace of the provided object does not match the namespace "
                                             "sent on the request")
        if "generateName" in metadata and "name" not in metadata:
            import uuid
            metadata["name"] = metadata["generateName"] + uuid.uuid4().hex[:5]
        check_schema(body)
        check_metadata(kind, metadata)
        if resource == "deployments":
            check_deployment(body, previous)
        elif resource == "jobs":
            check_pod_spec("Job.batch", metadata["name"], body["spec"]["template"]["spec"], "spec.template.spec")
            if body["spec"]["template"]["spec"].get("restartPolicy") not in ("Never", "OnFailure"):
                raise Refused(422, "Invalid", f'Job.batch "{metadata["name"]}" is invalid: spec.template.spec.'
                                              'restartPolicy: Required value: valid values: "OnFailure", "Never"')
        elif resource == "pods":
            check_pod_spec("Pod", metadata["name"], body["spec"], "spec")
        if previous is not None:
            sent = metadata.get("resourceVersion")
            if sent and sent != previous["metadata"]["resourceVersion"]:
                raise Refused(409, "Conflict", f'Operation cannot be fulfilled on {resource} "{metadata["name"]}": '
                                               "the object has been modified; please apply your changes to the "
                                               "latest version and try again")
            for server_field in SERVER_FIELDS:
                if server_field in previous["metadata"]:
                    metadata[server_field] = previous["metadata"][server_field]
            if previous.get("status") is not None:
                body["status"] = previous["status"]
        else:
            for server_field in SERVER_FIELDS:
                metadata.pop(server_field, None)
        return body

    # --- handlers ----------------------------------------------------------------------------

    def collection(self, request: Request, resource: str, namespace: str, body: Any) -> Response:
        if request.method == "POST":
            if resource == "pods":
                raise Refused(403, "Forbidden", "the double creates pods only from Deployments and Jobs")
            obj = self._validated(resource, namespace, body, None)
            if resource == "jobs":
                obj.setdefault("status", {})
            created = self.store.create(resource, namespace, obj)
            self.cluster.reconcile(namespace)
            return JSONResponse(created, status_code=201)
        query = request.query_params
        if query.get("watch") in ("true", "1"):
            return self._watch(resource, namespace, query.get("labelSelector"), query.get("fieldSelector"),
                               query.get("resourceVersion"), float(query.get("timeoutSeconds") or 1800))
        items = self._select(self.store.list(resource, namespace, query.get("labelSelector")),
                             query.get("fieldSelector"))
        kind, api_version = KINDS[resource]
        return JSONResponse({"kind": f"{kind}List", "apiVersion": api_version,
                             "metadata": {"resourceVersion": str(self.store.version)}, "items": items})

    @staticmethod
    def _select(items: list[dict[str, Any]], field_selector: str | None) -> list[dict[str, Any]]:
        for key, operator, value in parse_selector(field_selector):
            if key not in ("metadata.name", "metadata.namespace"):
                raise Refused(400, "BadRequest", f'"{key}" is not a known field selector: only "metadata.name", '
                                                 '"metadata.namespace"')
            field_name = key.split(".")[1]
            items = [item for item in items if (item["metadata"][field_name] == value) == (operator == "=")]
        return items

    def _watch(self, resource: str, namespace: str, label_selector: str | None, field_selector: str | None,
               since: str | None, timeout: float) -> Response:
        terms = parse_selector(label_selector)
        events = self.store.watch(resource, namespace, since if since not in (None, "", "0") else None,
                                  time.monotonic() + timeout)
        self._select([], field_selector)  # refuses an unknown field selector before streaming

        def lines() -> Iterator[bytes]:
            try:
                for kind, obj in events:
                    if labels_match(terms, obj["metadata"].get("labels") or {}) and \
                            self._select([obj], field_selector):
                        yield json.dumps({"type": kind, "object": obj}).encode() + b"\n"
            except Refused as error:
                yield json.dumps({"type": "ERROR", "object": error.status()}).encode() + b"\n"
        return StreamingResponse(lines(), media_type="application/json")

    def _existing(self, resource: str, namespace: str, name: str) -> dict[str, Any]:
        obj = self.store.get(resource, namespace, name)
        if obj is None:
            kind = KINDS[resource][0]
            group = KINDS[resource][1].partition("/")[0] if "/" in KINDS[resource][1] else ""
            full = f"{resource}.{group}" if group else resource
            raise Refused(404, "NotFound", f'{full} "{name}" not found', {"name": name, "kind": resource,
                                                                          "group": group or None, "k": kind})
        return obj

    def _patched(self, request: Request, current: dict[str, Any], body: Any) -> dict[str, Any]:
        content_type = request.headers.get("content-type", "").split(";")[0]
        if content_type == "application/json-patch+json":
            return json_patch(current, body)
        if content_type in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            return merge_patch(current, body)
        raise Refused(415, "UnsupportedMediaType", f"the body of the request was in an unknown format - accepted "
                                                   f"media types include: application/json-patch+json, "
                                                   f"application/merge-patch+json, "
                                                   f"application/strategic-merge-patch+json (got {content_type!r})")

    def item(self, request: Request, resource: str, namespace: str, body: Any) -> Response:
        name = request.path_params["name"]
        with self.store.lock:
            current = self._existing(resource, namespace, name)
            if request.method == "GET":
                return JSONResponse(current)
            if request.method == "DELETE":
                if resource == "pods":
                    deleted = self.cluster.delete_pod(namespace, name)
                else:
                    deleted = self.store.delete(resource, namespace, name)
                self.cluster.reconcile(namespace)
                return JSONResponse(deleted)
            wanted = body if request.method == "PUT" else self._patched(request, current, body)
            if isinstance(wanted, dict) and wanted.get("metadata", {}).get("name", name) != name:
                raise Refused(400, "BadRequest", "the name of the object does not match the name on the URL")
            obj = self._validated(resource, namespace, copy.deepcopy(wanted), current)
            if resource == "pods" and obj["spec"] != current["spec"]:
                raise Refused(422, "Invalid", f'Pod "{name}" is invalid: spec: Forbidden: pod updates may not change '
                                              "fields other than `spec.containers[*].image`, "
                                              "`spec.activeDeadlineSeconds`, `spec.tolerations` (only additions)")
            changed_spec = obj.get("spec") != current.get("spec")
            replaced = self.store.replace(resource, namespace, obj, bump_generation=changed_spec)
            self.cluster.reconcile(namespace)
            return JSONResponse(replaced)

    def _scale_of(self, deployment: dict[str, Any]) -> dict[str, Any]:
        meta = deployment["metadata"]
        labels = deployment["spec"]["selector"].get("matchLabels") or {}
        return {"kind": "Scale", "apiVersion": "autoscaling/v1",
                "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
                             "resourceVersion": meta["resourceVersion"],
                             "creationTimestamp": meta["creationTimestamp"]},
                "spec": {"replicas": deployment["spec"].get("replicas", 1)},
                "status": {"replicas": (deployment.get("status") or {}).get("replicas", 0),
                           "selector": ",".join(f"{key}={value}" for key, value in sorted(labels.items()))}}

    def scale(self, request: Request, resource: str, namespace: str, body: Any) -> Response:
        name = request.path_params["name"]
        with self.store.lock:
            deployment = self._existing("deployments", namespace, name)
            scale = self._scale_of(deployment)
            if request.method == "GET":
                return JSONResponse(scale)
            wanted = body if request.method == "PUT" else self._patched(request, scale, body)
            check_schema({**wanted, "kind": "Scale", "apiVersion": "autoscaling/v1"})
            replicas = (wanted.get("spec") or {}).get("replicas", 0)
            if not isinstance(replicas, int) or replicas < 0:
                raise Refused(422, "Invalid", f'Scale.autoscaling "{name}" is invalid: spec.replicas: Invalid value: '
                                              f"{replicas}: must be greater than or equal to 0")
            deployment["spec"]["replicas"] = replicas
            self.store.replace("deployments", namespace, deployment, bump_generation=True)
            self.cluster.reconcile(namespace)
            return JSONResponse(self._scale_of(deployment))

    def log(self, request: Request, resource: str, namespace: str, body: Any) -> Response:
        pod = self._existing("pods", namespace, request.path_params["name"])
        tail = request.query_params.get("tailLines")
        if not pod["spec"].get("nodeName"):
            raise Refused(400, "BadRequest", f'container "{pod["spec"]["containers"][0]["name"]}" in pod '
                                             f'"{pod["metadata"]["name"]}" is waiting to start: ContainerCreating')
        return PlainTextResponse(self.cluster.log(pod, int(tail) if tail else None))
