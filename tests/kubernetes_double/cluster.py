"""The double's cluster: objects with resourceVersions and watches, and the controllers that act on them.

- the Deployment controller keeps ``spec.replicas`` pods of each Deployment (scaling down, it removes
  unscheduled, then not-ready pods, then those with the lowest ``controller.kubernetes.io/pod-deletion-cost``,
  then the newest, as the ReplicaSet controller does), and the Job controller one pod per Job;
- the scheduler places pending pods on nodes by their requests (cpu, memory, ``nvidia.com/gpu``), node
  selector and tolerations, or leaves them Pending with ``PodScheduled=False``, reason ``Unschedulable``
  and the message kube-scheduler writes;
- the kubelet runs a placed pod's container as a local process with the pod's command, arguments and
  environment, on the pod's own loopback address (127.0.0.x), runs its startup and readiness probes,
  restarts it when it exits (``restartPolicy: Always``), and keeps its log. With no network namespace
  of its own, a container that would listen on every address of its pod finds that address in
  ``DOUBLE_POD_IP``; with no mount namespace, a path under a volume's mount point in its environment
  names the pod's own folder for that volume (``emptyDir``; ``secret`` and ``projected`` secrets, one
  file per key);
- the garbage collector deletes what an object owns (``ownerReferences``) with it.

The image is not pulled: a container runs with this machine's platform install first on its ``PATH``
(what the model-server image holds). Its root filesystem is not made read-only and NetworkPolicies are
stored and validated but not enforced: the double checks what the platform *asks* for, and the
manifests' policy tests check the rest.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import http.client
import itertools
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes.utils import parse_quantity

from .schemas import Refused, pod_security_violations

GPU = "nvidia.com/gpu"
GPU_PRODUCT = "nvidia.com/gpu.product"
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
HISTORY = 5000


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Node:
    name: str
    cpu: str = "8"
    memory: str = "32Gi"
    gpus: int = 0
    product: str | None = None
    taints: list[dict[str, str]] = field(default_factory=list)

    @property
    def labels(self) -> dict[str, str]:
        labels = {"kubernetes.io/hostname": self.name, "kubernetes.io/os": "linux"}
        if self.product:
            labels[GPU_PRODUCT] = self.product
        return labels

    @property
    def allocatable(self) -> dict[str, float]:
        return {"cpu": float(parse_quantity(self.cpu)), "memory": float(parse_quantity(self.memory)), GPU: self.gpus}


def gpu_node(name: str, product: str, gpus: int = 1) -> Node:
    """A GPU node as the GPU Operator leaves it: capacity, product label, and the GPU taint."""
    return Node(name, gpus=gpus, product=product, taints=[{"key": GPU, "value": "present", "effect": "NoSchedule"}])


def parse_selector(text: str | None) -> list[tuple[str, str, str | None]]:
    """A labelSelector query string (``a=b,c!=d,e``) as (key, operator, value) terms."""
    terms: list[tuple[str, str, str | None]] = []
    for term in filter(None, (text or "").split(",")):
        for operator in ("!=", "==", "="):
            if operator in term:
                key, _, value = term.partition(operator)
                terms.append((key.strip(), "!=" if operator == "!=" else "=", value.strip()))
                break
        else:
            terms.append((term.strip(), "exists", None))
    return terms


def labels_match(terms: list[tuple[str, str, str | None]], labels: dict[str, str]) -> bool:
    return all((operator == "=" and labels.get(key) == value) or (operator == "!=" and labels.get(key) != value)
               or (operator == "exists" and key in labels) for key, operator, value in terms)


class Store:
    """Objects by (resource, namespace, name), each change numbered by a resourceVersion and sent to watchers."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.version = 0
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.history: list[tuple[int, str, str, str, dict[str, Any]]] = []  # rv, resource, namespace, type, object
        self.watchers: list[tuple[str, str, queue.Queue[tuple[str, dict[str, Any]] | None]]] = []
        self.changed = threading.Condition(self.lock)

    def _record(self, resource: str, namespace: str, kind: str, obj: dict[str, Any]) -> None:
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)
        snapshot = copy.deepcopy(obj)
        self.history.append((self.version, resource, namespace, kind, snapshot))
        del self.history[:-HISTORY]
        for watched, watched_namespace, events in self.watchers:
            if watched == resource and watched_namespace == namespace:
                events.put((kind, snapshot))
        self.changed.notify_all()

    def get(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            return self.objects.get((resource, namespace, name))

    def list(self, resource: str, namespace: str, selector: str | None = None) -> list[dict[str, Any]]:
        terms = parse_selector(selector)
        with self.lock:
            return [obj for (kind, ns, _), obj in self.objects.items() if kind == resource and ns == namespace
                    and labels_match(terms, obj["metadata"].get("labels") or {})]

    def create(self, resource: str, namespace: str, obj: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            meta = obj["metadata"]
            key = (resource, namespace, meta["name"])
            if key in self.objects:
                raise Refused(409, "AlreadyExists", f'{resource} "{meta["name"]}" already exists',
                              {"name": meta["name"], "kind": resource})
            meta.update(namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp=now(), generation=1)
            self.objects[key] = obj
            self._record(resource, namespace, "ADDED", obj)
            return obj

    def replace(self, resource: str, namespace: str, obj: dict[str, Any], bump_generation: bool = False) -> dict[str, Any]:
        with self.lock:
            if bump_generation:
                obj["metadata"]["generation"] = obj["metadata"].get("generation", 1) + 1
            self.objects[(resource, namespace, obj["metadata"]["name"])] = obj
            self._record(resource, namespace, "MODIFIED", obj)
            return obj

    def delete(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            obj = self.objects.pop((resource, namespace, name), None)
            if obj is not None:
                self._record(resource, namespace, "DELETED", obj)
                uid = obj["metadata"]["uid"]
                for (kind, ns, other), dependent in list(self.objects.items()):  # garbage collection
                    if ns == namespace and any(ref.get("uid") == uid
                                               for ref in dependent["metadata"].get("ownerReferences") or []):
                        self.delete(kind, ns, other)
            return obj

    def watch(self, resource: str, namespace: str, since: str | None,
              deadline: float) -> Iterator[tuple[str, dict[str, Any]]]:
        """Events after resourceVersion ``since`` (or ADDED for every object now), then each change as it happens."""
        events: queue.Queue[tuple[str, dict[str, Any]] | None] = queue.Queue()
        with self.lock:
            if since:
                start = int(since)
                if self.history and start < self.history[0][0] - 1:
                    raise Refused(410, "Expired", f"too old resource version: {since} ({self.history[0][0]})")
                backlog = [(kind, obj) for rv, res, ns, kind, obj in self.history
                           if rv > start and res == resource and ns == namespace]
            else:
                backlog = [("ADDED", copy.deepcopy(obj)) for (res, ns, _), obj in self.objects.items()
                           if res == resource and ns == namespace]
            entry = (resource, namespace, events)
            self.watchers.append(entry)
        try:
            yield from backlog
            while (left := deadline - time.monotonic()) > 0:
                try:
                    event = events.get(timeout=min(left, 1.0))
                except queue.Empty:
                    continue
                if event is None:
                    return
                yield event
        finally:
            with self.lock:
                self.watchers.remove(entry)

    def close_watches(self) -> None:
        with self.lock:
            for _, _, events in self.watchers:
                events.put(None)


@dataclass
class Container:
    """One running pod's container, as the kubelet keeps it."""

    process: subprocess.Popen[bytes] | None
    log: Path
    restarts: int = 0
    started: bool = False
    ready: bool = False


class Cluster:
    """The API's state, with the controllers, scheduler and kubelet that run on it."""

    def __init__(self, nodes: list[Node], namespaces: dict[str, dict[str, str]], runtime_classes: set[str],
                 probe_period_scale: float = 0.05):
        self.store = Store()
        self.nodes = nodes
        self.namespaces = namespaces  # name → labels (pod-security.kubernetes.io/enforce: restricted)
        self.runtime_classes = runtime_classes
        self.probe_period_scale = probe_period_scale  # the double's clock: probe periods are scaled down by this
        self.work = Path(tempfile.mkdtemp(prefix="k8s-double-"))
        self.containers: dict[str, Container] = {}  # by pod uid
        self._addresses = itertools.cycle(f"127.0.0.{n}" for n in range(2, 255))
        self._stopping = threading.Event()
        self.ready_at: dict[str, float] = {}  # pod uid → perf_counter() when it first became Ready

    # --- the Deployment and Job controllers ---------------------------------------------------

    def reconcile(self, namespace: str) -> None:
        """Every Deployment of ``namespace`` has its number of pods; every Job its pod; status is current."""
        with self.store.lock:
            for deployment in self.store.list("deployments", namespace):
                self._reconcile_deployment(namespace, deployment)
            for job in self.store.list("jobs", namespace):
                self._reconcile_job(namespace, job)
            self.schedule(namespace)

    def _owned(self, namespace: str, owner: dict[str, Any]) -> list[dict[str, Any]]:
        uid = owner["metadata"]["uid"]
        return [pod for pod in self.store.list("pods", namespace)
                if any(ref["uid"] == uid for ref in pod["metadata"].get("ownerReferences") or [])]

    def _reconcile_deployment(self, namespace: str, deployment: dict[str, Any]) -> None:
        template = deployment["spec"]["template"]
        template_hash = hashlib.sha256(repr(sorted(str(template).encode())).encode()).hexdigest()[:10]
        pods = self._owned(namespace, deployment)
        for pod in pods:
            if pod["metadata"]["labels"].get("pod-template-hash") != template_hash:
                self.delete_pod(namespace, pod["metadata"]["name"])  # a new template: the old pods go
        pods = [pod for pod in self._owned(namespace, deployment)]
        wanted = deployment["spec"].get("replicas", 1)
        for _ in range(wanted - len(pods)):
            self._create_pod(namespace, deployment, template, f"{deployment['metadata']['name']}-{template_hash}-",
                             {"pod-template-hash": template_hash})
        if len(pods) > wanted:
            def removal_order(pod: dict[str, Any]) -> tuple[int, int, int, str]:
                status = pod.get("status") or {}
                return (0 if not pod["spec"].get("nodeName") else 1, 1 if self.is_ready(pod) else 0,
                        int((pod["metadata"].get("annotations") or {}).get(DELETION_COST, "0")),
                        "~" + pod["metadata"]["creationTimestamp"] + status.get("podIP", ""))
            for pod in sorted(pods, key=removal_order)[:len(pods) - wanted]:
                self.delete_pod(namespace, pod["metadata"]["name"])
        pods = self._owned(namespace, deployment)
        ready = sum(1 for pod in pods if self.is_ready(pod))
        status = {"observedGeneration": deployment["metadata"]["generation"], "replicas": len(pods),
                  "readyReplicas": ready, "availableReplicas": ready, "updatedReplicas": len(pods)}
        if deployment.get("status") != status:
            deployment["status"] = status
            self.store.replace("deployments", namespace, deployment)

    def _reconcile_job(self, namespace: str, job: dict[str, Any]) -> None:
        if not self._owned(namespace, job) and not (job.get("status") or {}).get("startTime"):
            job["status"] = {"startTime": now(), "active": 1}
            self.store.replace("jobs", namespace, job)
            self._create_pod(namespace, job, job["spec"]["template"], f"{job['metadata']['name']}-",
                             {"job-name": job["metadata"]["name"]})

    def _create_pod(self, namespace: str, owner: dict[str, Any], template: dict[str, Any], prefix: str,
                    extra_labels: dict[str, str]) -> None:
        meta = copy.deepcopy(template.get("metadata") or {})
        name = prefix + uuid.uuid4().hex[:5]
        meta["name"] = name
        meta["labels"] = {**(meta.get("labels") or {}), **extra_labels}
        meta["ownerReferences"] = [{"apiVersion": owner["apiVersion"], "kind": owner["kind"],
                                    "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
                                    "controller": True, "blockOwnerDeletion": True}]
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": copy.deepcopy(template["spec"]),
               "status": {"phase": "Pending", "conditions": []}}
        refusal = self.admit_pod(namespace, pod)
        if refusal:
            self.event(namespace, owner, "FailedCreate", f'Error creating: pods "{name}" is forbidden: {refusal}',
                       "Warning")
            return
        self.store.create("pods", namespace, pod)

    def admit_pod(self, namespace: str, pod: dict[str, Any]) -> str | None:
        """Why admission refuses the pod (Pod Security, a missing RuntimeClass), or None."""
        runtime_class = pod["spec"].get("runtimeClassName")
        if runtime_class and runtime_class not in self.runtime_classes:
            return f'pod rejected: RuntimeClass "{runtime_class}" not found'
        if self.namespaces.get(namespace, {}).get("pod-security.kubernetes.io/enforce") == "restricted":
            violations = pod_security_violations(pod)
            if violations:
                return f'violates PodSecurity "restricted:latest": {", ".join(violations)}'
        return None

    def event(self, namespace: str, about: dict[str, Any], reason: str, message: str, kind: str = "Normal") -> None:
        meta = about["metadata"]
        self.store.create("events", namespace, {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}"},
            "involvedObject": {"apiVersion": about["apiVersion"], "kind": about["kind"], "name": meta["name"],
                               "namespace": namespace, "uid": meta.get("uid", "")},
            "reason": reason, "message": message, "type": kind, "count": 1,
            "firstTimestamp": now(), "lastTimestamp": now(), "source": {"component": "kubernetes-double"}})

    # --- the scheduler -------------------------------------------------------------------------

    @staticmethod
    def requests(pod: dict[str, Any]) -> dict[str, float]:
        total = {"cpu": 0.0, "memory": 0.0, GPU: 0.0}
        for container in pod["spec"]["containers"]:
            resources = container.get("resources") or {}
            asked = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}  # requests default to limits
            for resource in total:
                if resource in asked:
                    total[resource] += float(parse_quantity(asked[resource]))
        return total

    def schedule(self, namespace: str) -> None:
        for pod in self.store.list("pods", namespace):
            if not pod["spec"].get("nodeName"):
                self._place(namespace, pod)

    def _place(self, namespace: str, pod: dict[str, Any]) -> None:
        asked = self.requests(pod)
        reasons: dict[str, int] = {}
        chosen = None
        for node in self.nodes:
            reason = self._misfit(pod, node, asked)
            if reason is None:
                chosen = node
                break
            reasons[reason] = reasons.get(reason, 0) + 1
        status = pod["status"]
        if chosen is None:
            summary = ", ".join(f"{count} {reason}" for reason, count in sorted(reasons.items()))
            message = (f"0/{len(self.nodes)} nodes are available: {summary}. preemption: 0/{len(self.nodes)} nodes "
                       f"are available: {len(self.nodes)} Preemption is not helpful for scheduling.")
            condition = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message,
                         "lastTransitionTime": now()}
            if not any(c.get("message") == message for c in status["conditions"]):
                status["conditions"] = [condition]
                self.store.replace("pods", namespace, pod)
                self.event(namespace, pod, "FailedScheduling", message, "Warning")
            return
        pod["spec"]["nodeName"] = chosen.name
        status.update(podIP=next(self._addresses), hostIP="10.0.0.1", startTime=now(),
                      conditions=[{"type": "PodScheduled", "status": "True", "lastTransitionTime": now()}])
        status["podIPs"] = [{"ip": status["podIP"]}]
        self.store.replace("pods", namespace, pod)
        self.event(namespace, pod, "Scheduled", f"Successfully assigned {namespace}/{pod['metadata']['name']} "
                                                f"to {chosen.name}")
        threading.Thread(target=self._kubelet, args=(namespace, pod["metadata"]["name"], pod["metadata"]["uid"]),
                         daemon=True).start()

    def _misfit(self, pod: dict[str, Any], node: Node, asked: dict[str, float]) -> str | None:
        selector = pod["spec"].get("nodeSelector") or {}
        if any(node.labels.get(key) != value for key, value in selector.items()):
            return "node(s) didn't match Pod's node affinity/selector"
        tolerations = pod["spec"].get("tolerations") or []
        for taint in node.taints:
            if taint["effect"] in ("NoSchedule", "NoExecute") and not any(_tolerates(t, taint) for t in tolerations):
                return f"node(s) had untolerated taint {{{taint['key']}: {taint.get('value', '')}}}"
        used = {"cpu": 0.0, "memory": 0.0, GPU: 0.0}
        for other in self.store.list("pods", pod["metadata"]["namespace"]):
            if other["spec"].get("nodeName") == node.name and other is not pod:
                for resource, amount in self.requests(other).items():
                    used[resource] += amount
        for resource in ("cpu", "memory", GPU):
            if asked[resource] and used[resource] + asked[resource] > node.allocatable[resource]:
                return f"Insufficient {resource}"
        return None

    # --- the kubelet ----------------------------------------------------------------------------

    @staticmethod
    def is_ready(pod: dict[str, Any]) -> bool:
        return any(c["type"] == "Ready" and c["status"] == "True" for c in (pod.get("status") or {}).get("conditions", []))

    @staticmethod
    def _mounted(value: str, mounts: dict[str, Path]) -> str:
        """A path under an emptyDir's mount point, as the pod's own folder for that volume (no mount namespace
        here: the host's /tmp is shared, a pod's /tmp must not be)."""
        for mount_path, folder in mounts.items():
            if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
                return str(folder) + value[len(mount_path.rstrip("/")):]
        return value

    def _environment(self, namespace: str, pod: dict[str, Any], container: dict[str, Any], tmp: Path) -> dict[str, str]:
        env = {"PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp),
               "TMPDIR": str(tmp), "HOSTNAME": pod["metadata"]["name"], "DOUBLE_POD_IP": pod["status"]["podIP"]}
        volumes = {volume["name"]: volume for volume in pod["spec"].get("volumes") or []}
        mounts = {}
        for mount in container.get("volumeMounts") or []:
            volume = volumes.get(mount["name"], {})
            if "emptyDir" in volume or "secret" in volume or "projected" in volume:
                mounts[mount["mountPath"]] = folder = tmp.parent / "volumes" / mount["name"]
                folder.mkdir(parents=True, exist_ok=True)
                self._write_secrets(namespace, volume, folder)
        for variable in container.get("env") or []:
            source = variable.get("valueFrom")
            if source is None:
                env[variable["name"]] = self._mounted(variable.get("value", ""), mounts)
            elif "fieldRef" in source:
                path = source["fieldRef"]["fieldPath"]
                env[variable["name"]] = {"status.podIP": pod["status"].get("podIP", ""),
                                         "metadata.name": pod["metadata"]["name"],
                                         "metadata.namespace": namespace}.get(path, "")
            elif "secretKeyRef" in source:
                reference = source["secretKeyRef"]
                secret = self.store.get("secrets", namespace, reference["name"])
                if secret is None or reference["key"] not in (secret.get("stringData") or secret.get("data") or {}):
                    raise LookupError(f'secret "{reference["name"]}" not found')
                data = secret.get("data") or {}
                env[variable["name"]] = (base64.b64decode(data[reference["key"]]).decode() if reference["key"] in data
                                         else secret["stringData"][reference["key"]])
        return env

    def _write_secrets(self, namespace: str, volume: dict[str, Any], folder: Path) -> None:
        """A ``secret`` or ``projected`` volume's files: each key of each secret, as the kubelet writes them."""
        names = [volume["secret"]["secretName"]] if "secret" in volume else [
            source["secret"]["name"] for source in volume.get("projected", {}).get("sources", []) if "secret" in source]
        for secret_name in names:
            secret = self.store.get("secrets", namespace, secret_name)
            if secret is None:
                raise LookupError(f'secret "{secret_name}" not found')
            for key, value in (secret.get("data") or {}).items():
                (folder / key).write_bytes(base64.b64decode(value))
            for key, value in (secret.get("stringData") or {}).items():
                (folder / key).write_text(value)

    def _kubelet(self, namespace: str, name: str, uid: str) -> None:
        """Run the pod's first container until the pod is deleted: start, probe, restart."""
        pod = self.store.get("pods", namespace, name)
        if pod is None:
            return
        spec = pod["spec"]["containers"][0]
        folder = self.work / uid
        tmp = folder / "tmp"
        tmp.mkdir(parents=True)
        log = folder / "container.log"
        state = self.containers[uid] = Container(None, log)
        backoff = 0.2
        while not self._stopping.is_set() and self._pod_exists(namespace, name, uid):
            try:
                env = self._environment(namespace, pod, spec, tmp)
            except LookupError as error:
                self._set_status(namespace, name, uid, waiting=("CreateContainerConfigError", str(error)))
                time.sleep(0.2)
                continue
            with log.open("ab") as out:
                state.process = subprocess.Popen([*spec.get("command", []), *spec.get("args", [])], env=env,
                                                 cwd=spec.get("workingDir") or tmp, stdout=out,
                                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                 start_new_session=True)
            self._set_status(namespace, name, uid, running=True)
            outcome = self._probe(namespace, name, uid, pod, spec, state)
            self._kill(state)
            if outcome == "deleted":
                break
            state.restarts += 1
            state.started = state.ready = False
            self._set_status(namespace, name, uid, waiting=("CrashLoopBackOff", f"back-off restarting {name}"))
            if pod["spec"].get("restartPolicy", "Always") == "Never":
                self._finish_job(namespace, pod, state.process.returncode if state.process else 1)
                break
            time.sleep(backoff)
            backoff = min(backoff * 2, 5)
        self._kill(state)

    def _pod_exists(self, namespace: str, name: str, uid: str) -> bool:
        pod = self.store.get("pods", namespace, name)
        return pod is not None and pod["metadata"]["uid"] == uid

    def _probe(self, namespace: str, name: str, uid: str, pod: dict[str, Any], spec: dict[str, Any],
               state: Container) -> str:
        """Probe until the container exits ("exited"), fails its startup probe ("killed") or the pod goes ("deleted")."""
        startup, readiness = spec.get("startupProbe"), spec.get("readinessProbe")
        failures = 0
        ip = pod["status"]["podIP"]
        while True:
            if not self._pod_exists(namespace, name, uid) or self._stopping.is_set():
                return "deleted"
            assert state.process is not None
            if state.process.poll() is not None:
                return "exited"
            probe = readiness if state.started else startup
            if not state.started and startup is None:
                state.started = True
                continue
            period = (probe or {}).get("periodSeconds", 10) * self.probe_period_scale
            passed = probe is None or _http_probe(ip, probe)
            if not state.started:
                if passed:
                    state.started, failures = True, 0
                    continue
                failures += 1
                if failures >= startup.get("failureThreshold", 3):
                    with state.log.open("a") as out:
                        out.write("double kubelet: startup probe failed, restarting the container\n")
                    return "killed"
            elif passed != state.ready:
                state.ready = passed
                self._set_status(namespace, name, uid, running=True)
                if passed:
                    self.ready_at.setdefault(uid, time.perf_counter())
            time.sleep(max(period, 0.01))

    def _set_status(self, namespace: str, name: str, uid: str, running: bool = False,
                    waiting: tuple[str, str] | None = None) -> None:
        with self.store.lock:
            pod = self.store.get("pods", namespace, name)
            if pod is None or pod["metadata"]["uid"] != uid:
                return
            state = self.containers[uid]
            ready = "True" if state.ready else "False"
            container = pod["spec"]["containers"][0]
            status = pod["status"]
            status["phase"] = "Running" if running else status["phase"]
            status["conditions"] = [c for c in status["conditions"] if c["type"] == "PodScheduled"] + [
                {"type": kind, "status": ready, "lastTransitionTime": now()} for kind in ("Ready", "ContainersReady")]
            status["containerStatuses"] = [{
                "name": container["name"], "image": container["image"], "imageID": "", "ready": state.ready,
                "started": state.started, "restartCount": state.restarts,
                "state": {"running": {"startedAt": now()}} if running else
                {"waiting": {"reason": waiting[0], "message": waiting[1]}} if waiting else {}}]
            self.store.replace("pods", namespace, pod)
            self.reconcile(namespace)

    def _finish_job(self, namespace: str, pod: dict[str, Any], code: int) -> None:
        with self.store.lock:
            job_name = pod["metadata"]["labels"].get("job-name")
            job = self.store.get("jobs", namespace, job_name) if job_name else None
            if job is not None:
                job["status"] = {**job.get("status", {}), "active": 0,
                                 **({"succeeded": 1} if code == 0 else {"failed": 1})}
                job["status"]["conditions"] = [{"type": "Complete" if code == 0 else "Failed", "status": "True",
                                                "lastTransitionTime": now()}]
                self.store.replace("jobs", namespace, job)
            live = self.store.get("pods", namespace, pod["metadata"]["name"])
            if live is not None:
                live["status"]["phase"] = "Succeeded" if code == 0 else "Failed"
                self.store.replace("pods", namespace, live)

    @staticmethod
    def _kill(state: Container) -> None:
        process = state.process
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def delete_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self.store.lock:
            pod = self.store.delete("pods", namespace, name)
        if pod is not None:
            state = self.containers.get(pod["metadata"]["uid"])
            if state is not None:
                self._kill(state)
            with self.store.lock:
                self.schedule(namespace)  # what it held may place a pending pod
        return pod

    def log(self, pod: dict[str, Any], tail: int | None) -> str:
        state = self.containers.get(pod["metadata"]["uid"])
        if state is None or not state.log.exists():
            return ""
        lines = state.log.read_text(errors="replace").splitlines()
        return "\n".join(lines[-tail:] if tail else lines) + ("\n" if lines else "")

    def shutdown(self) -> None:
        self._stopping.set()
        self.store.close_watches()
        for state in list(self.containers.values()):
            self._kill(state)
        shutil.rmtree(self.work, ignore_errors=True)


def _tolerates(toleration: dict[str, Any], taint: dict[str, str]) -> bool:
    if toleration.get("effect") and toleration["effect"] != taint["effect"]:
        return False
    if toleration.get("operator") == "Exists":
        return not toleration.get("key") or toleration["key"] == taint["key"]
    return toleration.get("key") == taint["key"] and toleration.get("value", "") == taint.get("value", "")


def _http_probe(ip: str, probe: dict[str, Any]) -> bool:
    action = probe.get("httpGet")
    if action is None:
        return True
    try:
        connection = http.client.HTTPConnection(ip, int(action["port"]), timeout=probe.get("timeoutSeconds", 1))
        connection.request("GET", action.get("path", "/"))
        status = connection.getresponse().status
        connection.close()
        return 200 <= status < 400
    except OSError:
        return False
