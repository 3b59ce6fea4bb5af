"""What the Kubernetes API test double refuses, as a real API server would.

Every object it receives is checked against the official JSON schemas (``kubernetes-validate``'s
strict ones, which refuse unknown fields) of each Kubernetes version the platform supports, then
against the rules the API server's validation adds beyond the schema: DNS-1123 names, label
syntax, a Deployment's selector matching its template and never changing, Pod Security
``restricted`` for pods in a namespace that enforces it.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

import jsonschema
from kubernetes_validate.utils import schema_contents
from referencing import Registry, Resource

SUPPORTED_VERSIONS = ("1.31.0", "1.34.0")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")


class Refused(Exception):
    """A request the API server refuses: its HTTP code, reason and message become a Status object."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details or {}

    def status(self) -> dict[str, Any]:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": self.message,
                "reason": self.reason, "details": self.details, "code": self.code}


@cache
def _validator(version: str, kind: str, api_version: str) -> jsonschema.protocols.Validator:
    group = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    folder = f"kubernetes-json-schema/v{version}-local-strict"
    schema = schema_contents(f"{folder}/{kind.lower()}-{group}.json", version)
    definitions = schema_contents(f"{folder}/_definitions.json", version)
    registry: Registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.validators.Draft202012Validator(schema, registry=registry)


def _path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(part) for part in error.absolute_path) or "<root>"


def check_schema(body: dict[str, Any]) -> None:
    """The body against the official schema of every supported version; unknown fields are a 400
    (``fieldValidation=Strict``), other schema errors a 422, as the API server answers."""
    for version in SUPPORTED_VERSIONS:
        error = jsonschema.exceptions.best_match(_validator(version, body["kind"], body["apiVersion"]).iter_errors(body))
        if error is None:
            continue
        if error.validator == "additionalProperties":
            unknown = re.findall(r"'([^']+)' was unexpected", error.message)
            prefix = _path(error)
            fields = ", ".join(f'unknown field "{prefix}.{name}"' if prefix != "<root>" else f'unknown field "{name}"'
                               for name in unknown)
            raise Refused(400, "BadRequest", f"strict decoding error: {fields}")
        raise Refused(422, "Invalid", f"{body['kind']} is invalid (Kubernetes {version}): {_path(error)}: "
                                      f"{error.message[:300]}")


def check_metadata(kind: str, metadata: dict[str, Any], name_pattern: re.Pattern[str] = DNS1123_SUBDOMAIN) -> None:
    name = metadata.get("name", "")
    if not name or len(name) > 253 or not name_pattern.match(name):
        raise Refused(422, "Invalid", f'{kind} "{name}" is invalid: metadata.name: Invalid value: "{name}": a '
                                      "lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                                      "characters, '-' or '.', and must start and end with an alphanumeric character",
                      {"name": name, "kind": kind.lower()})
    check_labels(kind, name, metadata.get("labels") or {}, "metadata.labels")


def check_labels(kind: str, name: str, labels: dict[str, str], where: str) -> None:
    for key, value in labels.items():
        prefix, _, short = key.rpartition("/")
        if (not LABEL_NAME.match(short) or len(short) > 63
                or (prefix and (len(prefix) > 253 or not DNS1123_SUBDOMAIN.match(prefix)))):
            raise Refused(422, "Invalid", f'{kind} "{name}" is invalid: {where}: Invalid value: "{key}": name part '
                                          "must consist of alphanumeric characters, '-', '_' or '.'")
        if len(value) > 63 or not LABEL_VALUE.match(value):
            raise Refused(422, "Invalid", f'{kind} "{name}" is invalid: {where}: Invalid value: "{value}": a valid '
                                          "label must be an empty string or consist of alphanumeric characters, "
                                          "'-', '_' or '.', and must start and end with an alphanumeric character")


def selector_matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels and matchExpressions) against a set of labels."""
    if any(labels.get(key) != value for key, value in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        if ((operator == "In" and labels.get(key) not in values) or (operator == "NotIn" and labels.get(key) in values)
                or (operator == "Exists" and key not in labels) or (operator == "DoesNotExist" and key in labels)):
            return False
    return True


def check_deployment(body: dict[str, Any], previous: dict[str, Any] | None) -> None:
    name = body["metadata"]["name"]
    spec = body["spec"]
    template = spec["template"]
    check_labels("Deployment", name, (template.get("metadata") or {}).get("labels") or {},
                 "spec.template.metadata.labels")
    if not (spec["selector"].get("matchLabels") or spec["selector"].get("matchExpressions")):
        raise Refused(422, "Invalid", f'Deployment.apps "{name}" is invalid: spec.selector: Invalid value: '
                                      "empty selector is invalid for deployment")
    if not selector_matches(spec["selector"], (template.get("metadata") or {}).get("labels") or {}):
        raise Refused(422, "Invalid", f'Deployment.apps "{name}" is invalid: spec.template.metadata.labels: Invalid '
                                      "value: `selector` does not match template `labels`")
    if previous is not None and previous["spec"]["selector"] != spec["selector"]:
        raise Refused(422, "Invalid", f'Deployment.apps "{name}" is invalid: spec.selector: Invalid value: '
                                      f"{spec['selector']}: field is immutable")
    if template["spec"].get("restartPolicy", "Always") != "Always":
        raise Refused(422, "Invalid", f'Deployment.apps "{name}" is invalid: spec.template.spec.restartPolicy: '
                                      'Unsupported value: "Never": supported values: "Always"')
    check_pod_spec("Deployment.apps", name, template["spec"], "spec.template.spec")


def check_pod_spec(kind: str, name: str, spec: dict[str, Any], where: str) -> None:
    for index, container in enumerate(spec.get("containers", [])):
        if not DNS1123_LABEL.match(container["name"]):
            raise Refused(422, "Invalid", f'{kind} "{name}" is invalid: {where}.containers[{index}].name: Invalid '
                                          f'value: "{container["name"]}": a lowercase RFC 1123 label')
        resources = container.get("resources") or {}
        for resource, request in (resources.get("requests") or {}).items():
            limit = (resources.get("limits") or {}).get(resource)
            if limit is not None and _quantity(request) > _quantity(limit):
                raise Refused(422, "Invalid", f'{kind} "{name}" is invalid: {where}.containers[{index}].resources.'
                                              f'requests: Invalid value: "{request}": must be less than or equal to '
                                              f"{resource} limit of {limit}")


def _quantity(value: Any) -> float:
    from kubernetes.utils import parse_quantity
    return float(parse_quantity(value))


def pod_security_violations(pod: dict[str, Any]) -> list[str]:
    """What makes a pod fail Pod Security ``restricted`` (a subset of its checks: the ones a model pod meets)."""
    spec = pod["spec"]
    pod_context = spec.get("securityContext") or {}
    found = []
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            found.append(f"host namespaces ({flag}=true)")
    for volume in spec.get("volumes") or []:
        allowed = {"name", "emptyDir", "secret", "configMap", "projected", "downwardAPI", "persistentVolumeClaim",
                   "ephemeral", "csi"}
        if set(volume) - allowed:
            found.append(f'restricted volume types (volume "{volume["name"]}")')
    for container in spec.get("containers", []) + spec.get("initContainers", []):
        context = container.get("securityContext") or {}
        label = f'container "{container["name"]}"'
        if context.get("privileged"):
            found.append(f"privileged ({label} must not set securityContext.privileged=true)")
        if context.get("allowPrivilegeEscalation") is not False:
            found.append(f"allowPrivilegeEscalation != false ({label} must set "
                         "securityContext.allowPrivilegeEscalation=false)")
        capabilities = context.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []) or set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}:
            found.append(f'unrestricted capabilities ({label} must set securityContext.capabilities.drop=["ALL"])')
        if not (context.get("runAsNonRoot", pod_context.get("runAsNonRoot"))):
            found.append(f"runAsNonRoot != true ({label} must set securityContext.runAsNonRoot=true)")
        if context.get("runAsUser", pod_context.get("runAsUser")) == 0:
            found.append(f"runAsUser=0 ({label} must not set runAsUser=0)")
        seccomp = (context.get("seccompProfile") or pod_context.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            found.append(f"seccompProfile ({label} must set securityContext.seccompProfile.type to "
                         '"RuntimeDefault" or "Localhost")')
    return found
