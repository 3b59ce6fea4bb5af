"""The Kubernetes runtime end to end, on the Kubernetes API test double: the registry (a real ``modelhall up``
process with MODELHALL_RUNTIME=kubernetes) creates Deployments, scales them, follows their pods; the double's
kubelet runs the model-server image's entry (``python -m modelhall.showcase.bootstrap``) as local processes,
which fetch their bundle from the registry with their version pull token and answer on their pod address."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from conftest import RegistryServer, serve_registry
from kubernetes_double import KubernetesDouble, Node, gpu_node
from modelhall.bundle import pack_bundle
from oci_helpers import http, push_packed
from test_environments import make_wheel
from test_runtime import predict, push, quick_hello, status, wait_for

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
IMAGE = "registry.example/modelhall/model-server@sha256:" + "1" * 64


def kubernetes_env(double: KubernetesDouble, **extra: str) -> dict[str, str]:
    return {"MODELHALL_RUNTIME": "kubernetes", "MODELHALL_K8S_KUBECONFIG": str(double.kubeconfig),
            "MODELHALL_K8S_NAMESPACE": double.namespace, "MODELHALL_K8S_IMAGE": IMAGE,
            "MODELHALL_REAPER_INTERVAL": "0.5", "MODELHALL_K8S_UNSCHEDULABLE_WAIT": "1", **extra}


@pytest.fixture(scope="module")
def double(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubernetesDouble]:
    """One double for the module: two CPU nodes and one node with one NVIDIA L4 (tainted, as the GPU Operator does)."""
    folder = tmp_path_factory.mktemp("double")
    with KubernetesDouble(folder, nodes=[Node("cpu-1"), Node("cpu-2"), gpu_node("gpu-1", "NVIDIA-L4")]) as served:
        yield served


@pytest.fixture(scope="module")
def package_index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A package index over HTTP, as a cluster's builds reach one (``alpha`` 1.0 only, which needs
    pyyaml): a folder of wheels and its listing page, which uv reads as ``--find-links``."""
    folder = tmp_path_factory.mktemp("wheelhouse")
    make_wheel(folder, "alpha", "1.0", requires=("pyyaml",))  # a dependency the image has: not built again
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietFiles, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()


class QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


@pytest.fixture(scope="module")
def k8s_registry(double: KubernetesDouble, package_index: str,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    index = {"UV_NO_INDEX": "1", "UV_FIND_LINKS": package_index}  # the operator's index settings reach the Jobs
    yield from serve_registry("sqlite", tmp_path_factory.mktemp("registry"), kubernetes_env(double, **index))


def with_resources(bundle: Path, resources: str) -> Path:
    spec = bundle / "modelhall.yaml"
    spec.write_text(spec.read_text() + f"resources: {resources}\n")
    return bundle


def pods_of(double: KubernetesDouble, digest: str) -> list[dict]:
    return double.pods(f"modelhall.io/digest={digest.split(':')[1][:63]}")


def deployment_of(double: KubernetesDouble, digest: str) -> dict:
    [deployment] = double.objects("deployments", f"modelhall.io/digest={digest.split(':')[1][:63]}")
    return deployment


def test_wake_predict_and_sleep_on_a_deployment(k8s_registry: RegistryServer, double: KubernetesDouble,
                                                tmp_path: Path) -> None:
    user, _, digest = push(k8s_registry, quick_hello(tmp_path), "podded")
    repository = f"{user}/podded"
    answer = predict(k8s_registry, repository, "Ada")
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"] == {"greeting": "Hello, Ada."} and answer.json()["digest"] == digest
    deployment = deployment_of(double, digest)
    labels = deployment["metadata"]["labels"]
    assert labels["app.kubernetes.io/managed-by"] == "modelhall"
    assert labels["modelhall.io/digest"] == digest.split(":")[1][:63]
    assert deployment["spec"]["replicas"] == 1
    [pod] = pods_of(double, digest)
    [worker] = status(k8s_registry, repository)["workers"]
    assert worker["id"].startswith(f"{pod['metadata']['name']}/{pod['metadata']['uid']}/")  # the runtime's id: the pod
    name = deployment["metadata"]["name"]
    scale_calls = [r for r in double.api.requests if r[1].endswith(f"/{name}/scale") and r[0] == "PATCH"]
    pod_lists = [r for r in double.api.requests if r[0] == "GET" and r[1].endswith("/pods")]
    assert len(scale_calls) == 1
    assert all("watch=true" in query for _, _, query in pod_lists[1:])  # followed by a watch, not polled
    wait_for(lambda: status(k8s_registry, repository)["state"] == "sleeping", "scaling to zero")
    wait_for(lambda: not pods_of(double, digest), "the pod going")
    assert deployment_of(double, digest)["spec"]["replicas"] == 0


def test_pods_are_hardened_and_fenced_and_their_objects_go_with_the_deployment(k8s_registry: RegistryServer,
                                                                               double: KubernetesDouble,
                                                                               tmp_path: Path) -> None:
    bundle = with_resources(quick_hello(tmp_path), "{cpu: 0.5, memory: 512Mi, disk: 256Mi}")
    user, _, digest = push(k8s_registry, bundle, "fenced")
    assert predict(k8s_registry, f"{user}/fenced", "x").status_code == 200
    deployment = deployment_of(double, digest)
    pod_spec = deployment["spec"]["template"]["spec"]
    [container] = pod_spec["containers"]
    assert pod_spec["automountServiceAccountToken"] is False
    assert pod_spec["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"] == {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
                                            "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]},
                                            "seccompProfile": {"type": "RuntimeDefault"}}
    assert container["resources"] == {"requests": {"cpu": "500m", "memory": str(512 * 1024**2)},
                                      "limits": {"cpu": "500m", "memory": str(512 * 1024**2)}}
    assert pod_spec["volumes"] == [{"name": "tmp", "emptyDir": {"sizeLimit": str(256 * 1024**2)}}]
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["failureThreshold"] * container["startupProbe"]["periodSeconds"] >= 600
    name = deployment["metadata"]["name"]
    uid = deployment["metadata"]["uid"]
    [policy] = [p for p in double.objects("networkpolicies") if p["metadata"]["name"] == name]
    [secret] = [s for s in double.objects("secrets") if s["metadata"]["name"] == name]
    for owned in (policy, secret):
        assert owned["metadata"]["ownerReferences"][0]["uid"] == uid
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert policy["spec"]["egress"][1]["ports"] == [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
    assert "MODELHALL_PULL_TOKEN" not in [e["name"] for e in container["env"] if "value" in e]  # from the Secret


TOKEN_THIEF = """
import os


def predict(name, style="plain"):
    return repr(sorted(key for key in os.environ if "TOKEN" in key))
"""


def test_a_pods_pull_token_reaches_its_own_version_only_and_never_its_model_code(k8s_registry: RegistryServer,
                                                                                double: KubernetesDouble,
                                                                                tmp_path: Path) -> None:
    user, token, digest = push(k8s_registry, quick_hello(tmp_path / "a", model=TOKEN_THIEF), "thief", public=False)
    answer = http(k8s_registry.url, token).post(f"/api/v1/repos/{user}/thief/predict", json={"inputs": {"name": "x"}},
                                                timeout=120)
    assert answer.json()["outputs"]["greeting"] == "[]"  # the model server's environment holds no token
    _, _, other = push_to(k8s_registry, quick_hello(tmp_path / "b"), f"{user}/thief", "v2", token)
    name = deployment_of(double, digest)["metadata"]["name"]
    [secret] = [s for s in double.objects("secrets") if s["metadata"]["name"] == name]
    stolen = {"Authorization": f"Bearer {secret['stringData']['token']}"}
    pod = httpx.Client(base_url=k8s_registry.url, headers=stolen)
    manifest = pod.get(f"/v2/{user}/thief/manifests/{digest}", headers={"Accept": OCI_MANIFEST})
    assert manifest.status_code == 200
    assert pod.get(f"/v2/{user}/thief/manifests/{other}", headers={"Accept": OCI_MANIFEST}).status_code == 404
    assert pod.get(f"/v2/{user}/thief/manifests/v2", headers={"Accept": OCI_MANIFEST}).status_code == 404
    other_layers = http(k8s_registry.url, token).get(f"/v2/{user}/thief/manifests/{other}",
                                                     headers={"Accept": OCI_MANIFEST}).json()["layers"]
    own_layers = {layer["digest"] for layer in manifest.json()["layers"]}
    foreign = next(layer["digest"] for layer in other_layers if layer["digest"] not in own_layers)
    assert pod.get(f"/v2/{user}/thief/blobs/{foreign}").status_code == 404
    assert pod.post(f"/v2/{user}/thief/blobs/uploads/").status_code in (401, 403, 404)  # no push
    assert pod.get(f"/api/v1/repos/{user}/thief").status_code in (401, 403, 404)


def test_a_gpu_model_lands_on_the_gpu_node_and_a_second_one_waits_for_the_gpu(k8s_registry: RegistryServer,
                                                                              double: KubernetesDouble,
                                                                              tmp_path: Path) -> None:
    first = with_resources(quick_hello(tmp_path / "a", idle_timeout=20), "{gpu: {count: 1, type: l4}}")
    user, _, first_digest = push(k8s_registry, first, "gpu-one")
    assert predict(k8s_registry, f"{user}/gpu-one", "x").status_code == 200
    [pod] = pods_of(double, first_digest)
    assert pod["spec"]["nodeName"] == "gpu-1"
    assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-L4"}
    assert pod["spec"]["runtimeClassName"] == "nvidia"
    assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    second = with_resources(quick_hello(tmp_path / "b", idle_timeout=2), "{gpu: {count: 1, type: NVIDIA-L4}}")
    other, _, second_digest = push(k8s_registry, second, "gpu-two")
    refused = predict(k8s_registry, f"{other}/gpu-two", "y")
    assert refused.status_code == 503
    assert refused.json()["status"] == "unschedulable"
    assert "0/3 nodes are available: 1 Insufficient nvidia.com/gpu, 2 node(s) didn't match Pod's node " \
           "affinity/selector" in refused.json()["detail"]
    assert status(k8s_registry, f"{other}/gpu-two")["state"] == "unschedulable"
    wait_for(lambda: not pods_of(double, second_digest), "the pending pod going")
    assert deployment_of(double, second_digest)["spec"]["replicas"] == 0
    wait_for(lambda: not pods_of(double, first_digest), "the first model sleeping, which frees the GPU", seconds=120)
    answer = predict(k8s_registry, f"{other}/gpu-two", "now")
    assert answer.status_code == 200, answer.text
    [second_pod] = pods_of(double, second_digest)
    assert second_pod["spec"]["nodeName"] == "gpu-1"
    wait_for(lambda: not pods_of(double, second_digest), "the second model sleeping")


def test_an_unplaceable_gpu_model_answers_why_and_cpu_fallback_runs_on_a_cpu_node(k8s_registry: RegistryServer,
                                                                                 double: KubernetesDouble,
                                                                                 tmp_path: Path) -> None:
    greedy = with_resources(quick_hello(tmp_path / "a"), "{gpu: {count: 1, type: h100}}")
    user, _, digest = push(k8s_registry, greedy, "h100")
    refused = predict(k8s_registry, f"{user}/h100", "x")
    assert refused.status_code == 503 and refused.json()["status"] == "unschedulable"
    assert "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector" in refused.json()["detail"]
    assert deployment_of(double, digest)["spec"]["template"]["spec"]["nodeSelector"] == {
        "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    wait_for(lambda: not pods_of(double, digest), "the pending pod going")
    flexible = with_resources(quick_hello(tmp_path / "b", idle_timeout=2),
                              "{gpu: {count: 1, type: h100, cpu_fallback: true}}")
    other, _, fallback_digest = push(k8s_registry, flexible, "h100-or-cpu")
    assert predict(k8s_registry, f"{other}/h100-or-cpu", "x").status_code == 200
    [pod] = pods_of(double, fallback_digest)
    assert pod["spec"]["nodeName"].startswith("cpu-") and "nvidia.com/gpu" not in json.dumps(pod["spec"])
    name = deployment_of(double, fallback_digest)["metadata"]["name"]
    replaced = [r for r in double.api.requests if r[0] == "PUT" and r[1].endswith(f"/deployments/{name}")]
    assert len(replaced) == 1  # tried on a GPU node first; the scheduler's no, not a node list, sent it to CPU
    assert not [r for r in double.api.requests if "/nodes" in r[1]]
    wait_for(lambda: not pods_of(double, fallback_digest), "the fallback model sleeping")


def test_under_load_a_second_pod_serves_and_goes_when_idle(k8s_registry: RegistryServer, double: KubernetesDouble,
                                                           tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    bundle = quick_hello(tmp_path, idle_timeout=300, model="import time, uuid\n\nWORKER = uuid.uuid4().hex\n\n"
                                                           "def predict(name, style='plain'):\n"
                                                           "    time.sleep(1.5)\n    return WORKER\n")
    spec = (bundle / "modelhall.yaml").read_text()
    (bundle / "modelhall.yaml").write_text(spec.replace("scaling: {min: 0, max: 1, idle_timeout: 300}",
                                                        "scaling: {min: 0, max: 2, idle_timeout: 3, concurrency: 1, "
                                                        "queue: 8}"))
    user, _, digest = push(k8s_registry, bundle, "elastic")
    first = predict(k8s_registry, f"{user}/elastic", "warm-up").json()["outputs"]["greeting"]
    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(lambda i: predict(k8s_registry, f"{user}/elastic", f"n{i}"), range(8)))
    assert [r.status_code for r in responses] == [200] * 8
    answered_by = {r.json()["outputs"]["greeting"] for r in responses}
    assert first in answered_by and len(answered_by) == 2  # the queue spilled over onto a second pod
    assert len(pods_of(double, digest)) == 2
    wait_for(lambda: not pods_of(double, digest), "both pods going when idle", seconds=90)
    assert status(k8s_registry, f"{user}/elastic")["state"] == "sleeping"


def push_to(registry: RegistryServer, bundle: Path, repository: str, tag: str, token: str) -> tuple[str, str, str]:
    with pack_bundle(bundle) as packed:
        digest = push_packed(http(registry.url, token), repository, tag, packed)
    return repository, token, digest


def test_a_crashed_registry_adopts_the_ready_pods_it_finds(k8s_registry: RegistryServer, double: KubernetesDouble,
                                                           tmp_path: Path) -> None:
    user, _, digest = push(k8s_registry, quick_hello(tmp_path, idle_timeout=300), "survivor")
    assert predict(k8s_registry, f"{user}/survivor", "before").status_code == 200
    [pod] = pods_of(double, digest)
    k8s_registry.crash()  # killed without cleaning up: its successor finds the pod by its labels
    k8s_registry.start()
    assert status(k8s_registry, f"{user}/survivor")["state"] == "running"
    assert predict(k8s_registry, f"{user}/survivor", "after").json()["outputs"] == {"greeting": "Hello, after."}
    assert [p["metadata"]["uid"] for p in pods_of(double, digest)] == [pod["metadata"]["uid"]]
    [worker] = status(k8s_registry, f"{user}/survivor")["workers"]
    assert worker["id"].startswith(pod["metadata"]["name"])
    logs = http(k8s_registry.url, k8s_registry.user()[1])  # a stranger may not read them
    assert logs.get(f"/api/v1/repos/{user}/survivor/deployment/logs").status_code == 403
    k8s_registry.stop()  # a clean shutdown puts its models to sleep
    wait_for(lambda: not pods_of(double, digest), "the pod going with a clean shutdown")
    k8s_registry.start()


def test_a_deleted_version_leaves_no_deployment_secret_or_policy_behind(k8s_registry: RegistryServer,
                                                                        double: KubernetesDouble,
                                                                        tmp_path: Path) -> None:
    user, token, digest = push(k8s_registry, quick_hello(tmp_path, idle_timeout=300), "deleted")
    kept_user, _, kept = push(k8s_registry, quick_hello(tmp_path / "kept", idle_timeout=301), "kept")
    for repository in (f"{user}/deleted", f"{kept_user}/kept"):
        assert predict(k8s_registry, repository, "x").status_code == 200
    name = deployment_of(double, digest)["metadata"]["name"]
    assert http(k8s_registry.url, token).delete(f"/v2/{user}/deleted/manifests/{digest}").status_code == 202

    def leftovers() -> list[str]:
        return [f"{kind}/{name}" for kind in ("deployments", "secrets", "networkpolicies", "pods")
                for obj in double.objects(kind) if obj["metadata"]["name"].startswith(name)]
    wait_for(lambda: not leftovers(), "the version's objects being deleted")
    assert deployment_of(double, kept)["spec"]["replicas"] == 1  # another version's stay
    assert predict(k8s_registry, f"{kept_user}/kept", "y").status_code == 200


ALPHA_MODEL = """
import alpha


def predict(name, style="plain"):
    return f"alpha {alpha.VERSION}, fetched: {'/environment/' in alpha.__file__}"
"""


def needing(tmp_path: Path, requirement: str) -> Path:
    bundle = quick_hello(tmp_path, idle_timeout=300, model=ALPHA_MODEL)
    (bundle / "requirements.txt").write_text(f"{requirement}\n")
    return bundle


def jobs_for(double: KubernetesDouble, key: str | None = None) -> list[dict]:
    return double.objects("jobs", f"modelhall.io/environment={key}" if key else "app.kubernetes.io/component=environment-build")


def test_a_model_needing_more_than_the_image_runs_on_an_environment_a_job_built_once(
        k8s_registry: RegistryServer, double: KubernetesDouble, tmp_path: Path) -> None:
    before = {job["metadata"]["name"] for job in jobs_for(double)}
    user, token, digest = push(k8s_registry, needing(tmp_path / "a", "alpha==1.0"), "needs-alpha")
    answer = predict(k8s_registry, f"{user}/needs-alpha", "x")
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"] == {"greeting": "alpha 1.0, fetched: True"}  # fetched, not in the image
    [job] = [job for job in jobs_for(double) if job["metadata"]["name"] not in before]
    pod_spec = job["spec"]["template"]["spec"]
    [container] = pod_spec["containers"]
    assert pod_spec["automountServiceAccountToken"] is False and pod_spec["restartPolicy"] == "Never"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert "MODELHALL_PUSH_TOKEN" not in [e["name"] for e in container["env"] if "value" in e]  # from a Secret
    env = {e["name"]: e["value"] for e in deployment_of(double, digest)["spec"]["template"]["spec"]["containers"][0]["env"]
           if "value" in e}
    artifact = env["MODELHALL_ENVIRONMENT"]
    manifest = http(k8s_registry.url, token).get(f"/v2/{user}/needs-alpha/manifests/{artifact}",
                                                 headers={"Accept": OCI_MANIFEST}).json()
    assert manifest["artifactType"] == "application/vnd.modelhall.environment.v1"
    build_log = http(k8s_registry.url, token).get(f"/api/v1/repos/{user}/needs-alpha/deployment/logs",
                                                  params={"build": "true"})
    assert f"environment {artifact}" in build_log.text  # the Job's own output, through the API
    assert "beyond the image: alpha==1.0\n" in build_log.text  # not the pyyaml it needs: the image has it

    other, other_token, _ = push(k8s_registry, needing(tmp_path / "b", "alpha==1.0"), "also-alpha")
    assert predict(k8s_registry, f"{other}/also-alpha", "y").json()["outputs"] == {"greeting": "alpha 1.0, fetched: True"}
    assert len([job for job in jobs_for(double) if job["metadata"]["name"] not in before]) == 1  # built once


def test_a_failing_environment_build_fails_the_version_with_the_installers_words(
        k8s_registry: RegistryServer, double: KubernetesDouble, tmp_path: Path) -> None:
    user, token, _ = push(k8s_registry, needing(tmp_path, "alpha==9.9"), "no-such-alpha")
    answer = predict(k8s_registry, f"{user}/no-such-alpha", "x")
    assert (answer.status_code, answer.json()["status"]) == (502, "failed"), answer.text
    deployment = status(k8s_registry, f"{user}/no-such-alpha", token)
    assert deployment["state"] == "failed" and "there is no version of alpha==9.9" in deployment["detail"]
    assert "the installer failed (exit status 1)" in deployment["detail"]
    assert "Traceback" not in deployment["detail"]
