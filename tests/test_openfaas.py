"""MODELHALL_RUNTIME=openfaas against the OpenFaaS gateway test double (tests/openfaas_double)."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import RegistryServer, serve_registry
from modelhall.adapters.runtimes.base import Build, Target, UnschedulableError
from modelhall.adapters.runtimes.openfaas import (
    Gateway,
    KubernetesScaler,
    NoGPUProfileError,
    OpenFaaSConfig,
    OpenFaaSRuntime,
    function_name,
    open_kubernetes_scaler,
)
from modelhall.registry.deployments import worker_client
from modelhall.templates import template_path
from kubernetes_double import KubernetesDouble, Node, gpu_node
from openfaas_double import MODEL_SERVER_COMMAND, OpenFaaSGatewayDouble
from test_kubernetes_runtime import needing, package_index  # noqa: F401 - package_index is a fixture
from test_runtime import predict, push, quick_hello, status, wait_for

MODEL_SERVER_IMAGE = "modelhall/model-server:test"
ECHO_IMAGE = "example/echo:1"
# A function that is ready at once and answers every path with its environment.
ECHO = """
import json, os
from http.server import BaseHTTPRequestHandler, HTTPServer
class Echo(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"path": self.path, "env": dict(os.environ)}).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args): pass
HTTPServer((os.environ["DOUBLE_POD_IP"], 8080), Echo).serve_forever()
"""
IMAGES = {ECHO_IMAGE: [sys.executable, "-c", ECHO], MODEL_SERVER_IMAGE: MODEL_SERVER_COMMAND}
DIGEST = "sha256:" + "ab" * 32
ROOT_PATH = f"/live/7@{DIGEST}"
TARGET = Target(7, "alice/model", DIGEST)
GPU_PROFILE = {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[OpenFaaSGatewayDouble]:
    """The gateway double on a Kubernetes double holding the functions' Deployments: a CPU node and a
    GPU node (tainted, as the GPU Operator leaves it), whose taint the "gpu" Profile tolerates."""
    (tmp_path / "cluster").mkdir()
    nodes = [Node("cpu-1"), gpu_node("gpu-1", "NVIDIA-A100-SXM4-40GB")]
    with KubernetesDouble(tmp_path / "cluster", nodes=nodes, namespace="openfaas-fn", pod_security=None) as cluster:
        double = OpenFaaSGatewayDouble(IMAGES, kubernetes=cluster, profiles={"gpu": GPU_PROFILE}).start()
        yield double
        double.stop()


def runtime_for(double: OpenFaaSGatewayDouble, image: str = ECHO_IMAGE, gpu_profile: str | None = "gpu",
                pro: bool = False, kubernetes: bool = True) -> OpenFaaSRuntime:
    config = OpenFaaSConfig(gateway=double.url, username="admin", password="secret", namespace="openfaas-fn",
                            image=image, registry_url="http://registry.invalid", gpu_profile=gpu_profile,
                            gpu_products={"a100-40gb": "NVIDIA-A100-SXM4-40GB"}, pro=pro)
    return OpenFaaSRuntime(config, Gateway(double.url, "admin", "secret", "openfaas-fn"),
                           credentials=lambda target, environments: "pull-token",
                           scaler=open_kubernetes_scaler(str(double.kubeconfig)) if kubernetes else None)


def bundle_with(tmp_path: Path, extra: str) -> Path:
    bundle = tmp_path / "bundle"
    shutil.copytree(template_path("hello"), bundle)
    with (bundle / "modelhall.yaml").open("a") as spec:
        spec.write(extra)
    return bundle


# --- the function the gateway receives -------------------------------------------------------------


def test_a_version_becomes_one_hardened_function_with_its_pull_secret(gateway: OpenFaaSGatewayDouble,
                                                                      tmp_path: Path) -> None:
    bundle = bundle_with(tmp_path, "resources: {cpu: 2, memory: 3Gi}\n")
    handle = runtime_for(gateway).start(bundle, Build("env-1", ""), TARGET, ROOT_PATH)
    name = function_name(TARGET)
    assert handle.id == f"{name}.openfaas-fn"
    assert handle.endpoint == f"{gateway.url}/function/{name}.openfaas-fn"
    function = gateway.function(name)
    assert function is not None
    deployment = function.deployment
    assert deployment.readOnlyRootFilesystem is True
    assert deployment.requests == deployment.limits and deployment.limits is not None
    assert (deployment.limits.cpu, deployment.limits.memory) == ("2", str(3 * 1024**3))
    assert deployment.labels is not None and deployment.labels["com.openfaas.scale.zero"] == "true"
    assert (deployment.labels["com.openfaas.scale.min"], deployment.labels["com.openfaas.scale.max"]) == ("1", "1")
    assert deployment.labels["com.openfaas.scale.zero-duration"] == "300s"
    assert not deployment.constraints and "com.openfaas.profile" not in (deployment.annotations or {})
    assert deployment.secrets == [f"{name}-pull"] and gateway.secrets[("openfaas-fn", f"{name}-pull")] == b"pull-token"
    assert (deployment.envVars or {})["MODELHALL_DIGEST"] == DIGEST
    assert "pull-token" not in str(deployment.envVars)  # the credential is in the secret only


def test_requirements_beyond_the_images_packages_are_refused_with_their_names(gateway: OpenFaaSGatewayDouble,
                                                                             tmp_path: Path) -> None:
    bundle = bundle_with(tmp_path, "")
    (bundle / "requirements.txt").write_text("surely-not-in-the-image-pkg==1.0\n")
    with pytest.raises(ValueError, match="surely-not-in-the-image-pkg==1.0 not in the model-server image; on OpenFaaS"):
        runtime_for(gateway).build(bundle, TARGET)
    assert runtime_for(gateway).build(bundle_with(tmp_path / "plain", ""), TARGET).environment == "image"


def test_a_second_start_updates_the_function_and_the_secret_in_place(gateway: OpenFaaSGatewayDouble,
                                                                     tmp_path: Path) -> None:
    runtime = runtime_for(gateway)
    first = runtime.start(bundle_with(tmp_path, ""), Build("env-1", ""), TARGET, ROOT_PATH)
    second = runtime.start(tmp_path / "bundle", Build("env-1", ""), TARGET, ROOT_PATH)
    assert first == second
    calls = [(method, path) for method, path, _ in gateway.requests]
    assert calls == [("PUT", "/system/secrets"), ("POST", "/system/secrets"), ("POST", "/system/functions"),
                     ("PUT", "/system/secrets"), ("PUT", "/system/functions")]  # the first PUT finds no secret


def test_a_gpu_model_runs_on_the_gpu_nodes_through_the_configured_profile(gateway: OpenFaaSGatewayDouble,
                                                                           tmp_path: Path) -> None:
    bundle = bundle_with(tmp_path, "resources: {gpu: {count: 1, type: a100-40gb}}\n")  # a short name
    handle = runtime_for(gateway).start(bundle, Build("env", ""), TARGET, ROOT_PATH)
    deployment = gateway.function(function_name(TARGET)).deployment  # type: ignore[union-attr]
    assert deployment.constraints == ["nvidia.com/gpu.product=NVIDIA-A100-SXM4-40GB"]
    assert (deployment.annotations or {})["com.openfaas.profile"] == "gpu"
    assert httpx.get(f"{handle.endpoint}/healthz", timeout=30).status_code == 200
    [pod] = gateway.kubernetes.pods(f"faas_function={function_name(TARGET)}")
    assert pod["spec"]["nodeName"] == "gpu-1"  # the constraint and the Profile's toleration placed it


def test_a_gpu_model_without_a_gpu_profile_is_unschedulable_and_deploys_nothing(gateway: OpenFaaSGatewayDouble,
                                                                                tmp_path: Path) -> None:
    bundle = bundle_with(tmp_path, "resources: {gpu: {count: 1}}\n")
    with pytest.raises(NoGPUProfileError, match="OpenFaaS Profile.*MODELHALL_OPENFAAS_GPU_PROFILE"):
        runtime_for(gateway, gpu_profile=None).start(bundle, Build("env", ""), TARGET, ROOT_PATH)
    assert gateway.requests == [] and gateway.functions == {}


@pytest.mark.parametrize("gpu_type", ["A100,kubernetes.io/hostname=victim", "A100=x", "a" * 64, "A100\nkey=value"])
def test_a_hostile_gpu_type_cannot_add_node_selectors(gateway: OpenFaaSGatewayDouble, tmp_path: Path,
                                                      gpu_type: str) -> None:
    bundle = bundle_with(tmp_path, f'resources: {{"gpu": {{"count": 1, "type": {json.dumps(gpu_type)}}}}}\n')
    with pytest.raises(UnschedulableError, match="GPU product name"):
        runtime_for(gateway).start(bundle, Build("env", ""), TARGET, ROOT_PATH)
    assert gateway.functions == {}


def test_scaling_max_beyond_what_community_edition_runs_is_reported(gateway: OpenFaaSGatewayDouble, tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    bundle = bundle_with(tmp_path, "")
    spec = (bundle / "modelhall.yaml").read_text().replace("max: 1,", "max: 8,")
    (bundle / "modelhall.yaml").write_text(spec)
    with caplog.at_level(logging.WARNING):
        runtime_for(gateway).start(bundle, Build("env", ""), TARGET, ROOT_PATH)
    assert "up to 8 replicas" in caplog.text and "at most 5" in caplog.text
    labels = gateway.function(function_name(TARGET)).deployment.labels  # type: ignore[union-attr]
    assert labels is not None and labels["com.openfaas.scale.max"] == "8"  # not silently cut


# --- scaling -------------------------------------------------------------------------------------


def test_idle_functions_go_to_zero_through_kubernetes_and_the_gateway_wakes_them(gateway: OpenFaaSGatewayDouble,
                                                                                 tmp_path: Path) -> None:
    runtime = runtime_for(gateway)
    handle = runtime.start(bundle_with(tmp_path, ""), Build("env", ""), TARGET, ROOT_PATH)
    name = function_name(TARGET)
    assert httpx.get(f"{handle.endpoint}/x?y=1", timeout=30).json()["path"] == "/x?y=1"
    [pid] = gateway.processes(name)
    runtime.stop(handle)
    assert gateway.replicas(name) == 0 and gateway.processes(name) == []
    assert runtime.alive(handle)  # asleep, not gone
    answer = httpx.get(f"{handle.endpoint}/after", timeout=30)  # held while the gateway scales it from zero
    assert answer.status_code == 200 and answer.json()["path"] == "/after"
    assert gateway.processes(name) and gateway.processes(name) != [pid]


@pytest.mark.parametrize(("pro", "kubernetes"), [(False, False), (True, True)])
def test_without_kubernetes_access_or_with_pro_in_charge_the_registry_keeps_its_hands_off(
        gateway: OpenFaaSGatewayDouble, tmp_path: Path, caplog: pytest.LogCaptureFixture, pro: bool,
        kubernetes: bool) -> None:
    with caplog.at_level(logging.WARNING):
        runtime = runtime_for(gateway, pro=pro, kubernetes=kubernetes)
    assert ("OpenFaaS Pro scales" if pro else "no Kubernetes access") in caplog.text
    handle = runtime.start(bundle_with(tmp_path, ""), Build("env", ""), TARGET, ROOT_PATH)
    runtime.stop(handle)
    assert gateway.replicas(function_name(TARGET)) == 1
    assert not any(path.endswith("/scale") for _, path, _ in gateway.kubernetes.api.requests)


def test_the_registry_reaches_a_function_under_its_gateway_path_with_paths_and_queries_as_encoded(
        gateway: OpenFaaSGatewayDouble, tmp_path: Path) -> None:
    handle = runtime_for(gateway).start(bundle_with(tmp_path, ""), Build("env", ""), TARGET, ROOT_PATH)

    async def ask() -> str:
        async with worker_client(handle, timeout=30) as client, client.get("/gradio_api/a%2Fb?x=%2F&y=1") as answer:
            return (await answer.json(content_type=None))["path"]

    path, _, query = asyncio.run(ask()).partition("?")
    assert path == "/gradio_api/a%2Fb"  # not /function/…, and not a/b
    assert sorted(httpx.QueryParams(query).multi_items()) == [("x", "/"), ("y", "1")]


def test_a_function_removed_behind_the_registrys_back_is_not_alive(gateway: OpenFaaSGatewayDouble,
                                                                   tmp_path: Path) -> None:
    handle = runtime_for(gateway).start(bundle_with(tmp_path, ""), Build("env", ""), TARGET, ROOT_PATH)
    admin = httpx.Client(base_url=gateway.url, auth=("admin", "secret"))
    delete = admin.request("DELETE", "/system/functions", json={"functionName": function_name(TARGET)})
    assert delete.status_code == 200
    assert not runtime_for(gateway).alive(handle)  # a fresh runtime: nothing cached


def test_a_gateway_that_does_not_answer_leaves_the_functions_as_they_were(gateway: OpenFaaSGatewayDouble,
                                                                         tmp_path: Path) -> None:
    handle = runtime_for(gateway).start(bundle_with(tmp_path, ""), Build("env", ""), TARGET, ROOT_PATH)
    unreachable = runtime_for(gateway)
    unreachable.gateway = Gateway("http://127.0.0.1:1", "admin", "secret", "openfaas-fn")
    assert unreachable.alive(handle)  # not known dead: kept, and its calls fail on their own
    assert "could not be read" in unreachable.logs(handle)


# --- the double is as strict as the gateway --------------------------------------------------------


def test_the_gateway_double_refuses_what_the_gateway_refuses(gateway: OpenFaaSGatewayDouble) -> None:
    admin = httpx.Client(base_url=gateway.url, auth=("admin", "secret"))
    good = {"service": "fn", "image": ECHO_IMAGE, "namespace": "openfaas-fn"}
    assert httpx.post(f"{gateway.url}/system/functions", json=good).status_code == 401
    assert admin.post("/system/functions", json={**good, "envvars": {}}).status_code == 400  # unknown field
    assert admin.post("/system/functions", json={**good, "service": "Bad_Name"}).status_code == 400
    assert admin.post("/system/functions", json={**good, "namespace": "kube-system"}).status_code == 400
    assert admin.post("/system/functions", json={**good, "secrets": ["missing"]}).status_code == 400
    assert admin.post("/system/functions", json={**good, "limits": {"memory": "lots"}}).status_code == 400
    assert admin.post("/system/functions", json={**good, "annotations": {"com.openfaas.profile": "x"}}).status_code == 400
    assert admin.put("/system/functions", json=good).status_code == 404
    assert gateway.functions == {}
    assert admin.post("/system/functions", json=good).status_code == 202
    assert admin.post("/system/functions", json=good).status_code == 400  # exists already


@pytest.mark.parametrize(("asked", "got"), [(0, 1), (3, 3), (9, 5)])
def test_the_gateway_double_clamps_scale_requests_as_community_edition_does(gateway: OpenFaaSGatewayDouble,
                                                                            asked: int, got: int) -> None:
    admin = httpx.Client(base_url=gateway.url, auth=("admin", "secret"), timeout=30)
    assert admin.post("/system/functions", json={"service": "fn", "image": ECHO_IMAGE}).status_code == 202
    answer = admin.post("/system/scale-function/fn", json={"serviceName": "fn", "replicas": asked})
    assert answer.status_code == 202
    assert admin.get("/system/function/fn", params={"namespace": "openfaas-fn"}).json()["replicas"] == got


def test_kubernetes_scale_reaches_zero_where_the_gateway_cannot(gateway: OpenFaaSGatewayDouble) -> None:
    admin = httpx.Client(base_url=gateway.url, auth=("admin", "secret"), timeout=30)
    assert admin.post("/system/functions", json={"service": "fn", "image": ECHO_IMAGE}).status_code == 202
    KubernetesScaler(str(gateway.kubeconfig)).scale("fn", "openfaas-fn", 0)
    assert admin.get("/system/function/fn").json()["replicas"] == 0
    assert httpx.get(f"{gateway.url}/function/fn.openfaas-fn/", timeout=30).status_code == 200
    assert httpx.get(f"{gateway.url}/function/nope/", timeout=30).status_code == 404


# --- end to end, through the registry ------------------------------------------------------------


@pytest.fixture
def openfaas_registry(gateway: OpenFaaSGatewayDouble, database_kind: str, package_index: str,
                      tmp_path: Path) -> Iterator[RegistryServer]:
    yield from serve_registry(database_kind, tmp_path / "registry", {
        "MODELHALL_REAPER_INTERVAL": "0.5", "MODELHALL_RUNTIME": "openfaas", "MODELHALL_OPENFAAS_GATEWAY": gateway.url,
        "MODELHALL_OPENFAAS_PASSWORD": "secret", "MODELHALL_K8S_IMAGE": MODEL_SERVER_IMAGE,
        "MODELHALL_K8S_KUBECONFIG": str(gateway.kubeconfig), "UV_NO_INDEX": "1", "UV_FIND_LINKS": package_index})


def test_push_predict_sleep_and_wake_through_openfaas(openfaas_registry: RegistryServer,
                                                      gateway: OpenFaaSGatewayDouble, tmp_path: Path) -> None:
    user, token, digest = push(openfaas_registry, quick_hello(tmp_path), "faasy", public=False)
    repository = f"{user}/faasy"
    answer = predict(openfaas_registry, repository, "Ada", token)  # the first predict wakes the function
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"] == {"greeting": "Hello, Ada."} and answer.json()["digest"] == digest
    [worker] = status(openfaas_registry, repository, token)["workers"]
    name = worker["id"].partition(".")[0]
    assert gateway.processes(name)
    wait_for(lambda: status(openfaas_registry, repository, token)["state"] == "sleeping", "the deployment sleeping")
    wait_for(lambda: gateway.replicas(name) == 0 and not gateway.processes(name),
             "the idle function scaled to zero")
    again = predict(openfaas_registry, repository, "Bo", token)  # wakes it again
    assert again.status_code == 200, again.text
    assert again.json()["outputs"] == {"greeting": "Hello, Bo."}
    assert gateway.processes(name)
    deploys = [path for method, path, _ in gateway.requests if (method, path) == ("POST", "/system/functions")]
    assert len(deploys) == 1  # deployed once, updated on the later wake


def test_a_restarted_registry_adopts_its_functions(openfaas_registry: RegistryServer, gateway: OpenFaaSGatewayDouble,
                                                   tmp_path: Path) -> None:
    user, token, _ = push(openfaas_registry, quick_hello(tmp_path, idle_timeout=300), "kept", public=False)
    repository = f"{user}/kept"
    assert predict(openfaas_registry, repository, "before", token).status_code == 200
    [worker] = status(openfaas_registry, repository, token)["workers"]
    [pid] = gateway.processes(worker["id"].partition(".")[0])
    openfaas_registry.crash()
    openfaas_registry.start()
    assert status(openfaas_registry, repository, token)["state"] == "running"
    assert predict(openfaas_registry, repository, "after", token).json()["outputs"] == {"greeting": "Hello, after."}
    assert [w["id"] for w in status(openfaas_registry, repository, token)["workers"]] == [worker["id"]]
    assert gateway.processes(worker["id"].partition(".")[0]) == [pid]  # the same replica answered


def test_a_gpu_model_with_no_gpu_profile_is_unschedulable_through_the_registry(
        openfaas_registry: RegistryServer, gateway: OpenFaaSGatewayDouble, tmp_path: Path) -> None:
    bundle = quick_hello(tmp_path)
    with (bundle / "modelhall.yaml").open("a") as spec:
        spec.write("resources: {gpu: {count: 1}}\n")
    user, token, _ = push(openfaas_registry, bundle, "gpu", public=False)
    answer = predict(openfaas_registry, f"{user}/gpu", "Ada", token)
    assert answer.status_code == 503, answer.text
    assert answer.json()["status"] == "unschedulable" and "OpenFaaS Profile" in answer.json()["detail"]
    deployment = status(openfaas_registry, f"{user}/gpu", token)
    assert deployment["state"] == "unschedulable" and "MODELHALL_OPENFAAS_GPU_PROFILE" in deployment["detail"]
    assert gateway.functions == {}


def test_a_removed_version_leaves_no_function_or_secret(gateway: OpenFaaSGatewayDouble, tmp_path: Path) -> None:
    runtime = runtime_for(gateway)
    runtime.start(bundle_with(tmp_path, ""), Build("env", ""), TARGET, ROOT_PATH)
    name = function_name(TARGET)
    assert gateway.function(name) is not None and ("openfaas-fn", f"{name}-pull") in gateway.secrets
    runtime.remove(TARGET)
    assert gateway.function(name) is None and not gateway.processes(name)
    assert ("openfaas-fn", f"{name}-pull") not in gateway.secrets
    runtime.remove(TARGET)  # removing what is gone already is no error


def test_a_function_needing_more_than_the_image_runs_on_an_environment_a_job_built(
        openfaas_registry: RegistryServer, gateway: OpenFaaSGatewayDouble, database_kind: str, tmp_path: Path) -> None:
    if database_kind != "sqlite":
        pytest.skip("the environment's path is the same on both databases")
    user, token, _ = push(openfaas_registry, needing(tmp_path, "alpha==1.0"), "faas-alpha", public=False)
    answer = predict(openfaas_registry, f"{user}/faas-alpha", "x", token)
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"] == {"greeting": "alpha 1.0, fetched: True"}
    [job] = gateway.kubernetes.objects("jobs", "app.kubernetes.io/component=environment-build")
    assert job["spec"]["template"]["spec"]["automountServiceAccountToken"] is False  # in the functions namespace
    [worker] = status(openfaas_registry, f"{user}/faas-alpha", token)["workers"]
    function = gateway.function(worker["id"].partition(".")[0])
    assert function is not None and (function.deployment.envVars or {})["MODELHALL_ENVIRONMENT"].startswith("sha256:")
