"""The Kubernetes API double itself: it refuses what a real API server refuses, and its scheduler and
kubelet behave as the runtime's tests rely on (through the official client, as the runtime talks to it)."""

from __future__ import annotations

import sys
import httpx
import pytest
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from kubernetes_double import KubernetesDouble
from kubernetes_double.fixtures import kubernetes_double  # noqa: F401 - a fixture

HARDENED = {"runAsNonRoot": True, "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"}}
SERVE = [sys.executable, "-c", "import http.server, os; http.server.HTTPServer((os.environ['POD_IP'], 8080), "
                               "http.server.SimpleHTTPRequestHandler).serve_forever()"]


def apis(double: KubernetesDouble) -> tuple[client.AppsV1Api, client.CoreV1Api]:
    api_client = config.new_client_from_config(str(double.kubeconfig))
    return client.AppsV1Api(api_client), client.CoreV1Api(api_client)


def deployment(name: str = "web", replicas: int = 0, context: dict | None = None, **pod: object) -> dict:
    container = {"name": "web", "image": "example.org/web@sha256:" + "0" * 64, "command": SERVE,
                 "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                 "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
                 "securityContext": HARDENED if context is None else context,
                 "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "64Mi"}}}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [container], **pod}}}}


def refusal(call) -> ApiException:  # type: ignore[no-untyped-def]
    with pytest.raises(ApiException) as caught:
        call()
    return caught.value


def test_refuses_what_an_api_server_refuses(kubernetes_double: KubernetesDouble) -> None:
    apps, _ = apis(kubernetes_double)
    namespace = kubernetes_double.namespace
    unknown = deployment()
    unknown["spec"]["template"]["spec"]["containers"][0]["imagePullPolice"] = "Always"
    # the official client refuses the unknown field itself: sent raw, as kubectl or curl could
    answer = httpx.post(f"{kubernetes_double.url}/apis/apps/v1/namespaces/{namespace}/deployments", json=unknown)
    assert answer.status_code == 400 and answer.json()["kind"] == "Status"
    assert 'unknown field "spec.template.spec.containers.0.imagePullPolice"' in answer.json()["message"]
    error = refusal(lambda: apps.create_namespaced_deployment(namespace, deployment(name="Not_A_Name")))
    assert error.status == 422 and "RFC 1123" in error.body
    apps.create_namespaced_deployment(namespace, deployment())
    assert refusal(lambda: apps.create_namespaced_deployment(namespace, deployment())).status == 409
    moved = deployment()
    moved["spec"]["selector"] = {"matchLabels": {"app": "web", "tier": "x"}}
    moved["spec"]["template"]["metadata"]["labels"]["tier"] = "x"
    error = refusal(lambda: apps.replace_namespaced_deployment("web", namespace, moved))
    assert error.status == 422 and "field is immutable" in error.body
    error = refusal(lambda: apps.patch_namespaced_deployment_scale("web", namespace, {"spec": {"replicas": -1}},
                                                                   _content_type="application/merge-patch+json"))
    assert error.status == 422
    assert refusal(lambda: apps.read_namespaced_deployment("nope", namespace)).status == 404


def test_scale_then_watch_until_ready_then_scale_to_zero(kubernetes_double: KubernetesDouble) -> None:
    apps, core = apis(kubernetes_double)
    namespace = kubernetes_double.namespace
    created = apps.create_namespaced_deployment(namespace, deployment())
    apps.patch_namespaced_deployment_scale("web", namespace, {"spec": {"replicas": 2}},
                                           _content_type="application/merge-patch+json")
    ready: set[str] = set()
    stream = watch.Watch().stream(core.list_namespaced_pod, namespace, label_selector="app=web",
                                  resource_version=created.metadata.resource_version, timeout_seconds=30,
                                  deserialize=False)
    for event in stream:
        conditions = event["object"]["status"].get("conditions", [])
        if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
            ready.add(event["object"]["status"]["podIP"])
        if len(ready) == 2:
            break
    assert len(ready) == 2 and all(ip.startswith("127.0.0.") for ip in ready)
    assert apps.read_namespaced_deployment("web", namespace).status.ready_replicas == 2
    apps.patch_namespaced_deployment_scale("web", namespace, {"spec": {"replicas": 0}},
                                           _content_type="application/merge-patch+json")
    assert core.list_namespaced_pod(namespace, label_selector="app=web").items == []


def test_a_gpu_pod_nowhere_to_go_is_pending_with_the_schedulers_message(kubernetes_double: KubernetesDouble) -> None:
    apps, core = apis(kubernetes_double)
    namespace = kubernetes_double.namespace
    greedy = deployment(replicas=1, nodeSelector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
                        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])
    greedy["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = "1"
    apps.create_namespaced_deployment(namespace, greedy)
    (pod,) = core.list_namespaced_pod(namespace).items
    (condition,) = pod.status.conditions
    assert (condition.type, condition.status, condition.reason) == ("PodScheduled", "False", "Unschedulable")
    assert condition.message.startswith("0/3 nodes are available: 3 node(s) didn't match Pod's node affinity")


def test_pods_that_break_pod_security_restricted_are_not_created(kubernetes_double: KubernetesDouble) -> None:
    apps, core = apis(kubernetes_double)
    namespace = kubernetes_double.namespace
    apps.create_namespaced_deployment(namespace, deployment(replicas=1, context={"runAsNonRoot": True}))
    assert core.list_namespaced_pod(namespace).items == []
    (event,) = [e for e in core.list_namespaced_event(namespace).items if e.reason == "FailedCreate"]
    assert 'violates PodSecurity "restricted:latest": allowPrivilegeEscalation != false' in event.message
