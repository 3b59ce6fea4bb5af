"""The requests of the OpenFaaS gateway API that Modelhall sends, as its published description has them.

Encoded from ``api-docs/spec.openapi.yml`` in openfaas/faas (components ``FunctionDeployment``,
``FunctionResources``, ``ScaleServiceRequest``, ``Secret``/``SecretDescription``/``SecretValues``,
``DeleteFunctionRequest``), with the ``namespace`` fields faas-provider's types add. Stricter than the
Go gateway, which ignores a field it does not know: here an unknown field is refused, so a typo in a
request cannot pass the tests and be silently dropped by the real gateway. Also the checks faas-netes
makes before it creates anything (names as DNS labels, Kubernetes quantities, label syntax).
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")  # faas-netes: function names, at most 63
QUANTITY = re.compile(r"^[+]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|[KMGTPE]i?|[mkMGTPE]|n|u)?$")  # Kubernetes
LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
CONSTRAINT = re.compile(r"^\s*(?P<key>[^=\s]+)\s*==?\s*(?P<value>[^=\s]*)\s*$")  # faas-netes: key=value, key == value


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def dns_label(value: str) -> str:
    if len(value) > 63 or not DNS_LABEL.fullmatch(value):
        raise ValueError("must be a DNS-1123 label: lower case letters, digits and '-', at most 63")
    return value


class FunctionResources(Strict):
    memory: str | None = None
    cpu: str | None = None

    @field_validator("memory", "cpu")
    @classmethod
    def _quantity(cls, value: str | None) -> str | None:
        if value is not None and not QUANTITY.fullmatch(value):
            raise ValueError("not a Kubernetes quantity")
        return value


class FunctionDeployment(Strict):
    service: str
    image: str = Field(min_length=1)
    namespace: str | None = None
    envProcess: str | None = None
    constraints: list[str] | None = None
    envVars: dict[str, str] | None = None
    secrets: list[str] | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    limits: FunctionResources | None = None
    requests: FunctionResources | None = None
    readOnlyRootFilesystem: bool | None = None
    registryAuth: str | None = None  # deprecated, ignored
    network: str | None = None  # deprecated, ignored

    _service = field_validator("service")(classmethod(lambda cls, value: dns_label(value)))

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels: dict[str, str] | None) -> dict[str, str] | None:
        for key, value in (labels or {}).items():
            if not LABEL_KEY.fullmatch(key) or not LABEL_VALUE.fullmatch(value):
                raise ValueError(f"invalid label {key!r}: {value!r}")
        return labels

    @field_validator("constraints")
    @classmethod
    def _constraints(cls, constraints: list[str] | None) -> list[str] | None:
        for constraint in constraints or []:
            match = CONSTRAINT.fullmatch(constraint)
            if not match or not LABEL_KEY.fullmatch(match["key"]) or not LABEL_VALUE.fullmatch(match["value"]):
                raise ValueError(f"invalid constraint {constraint!r}")
        return constraints


class ScaleServiceRequest(Strict):
    serviceName: str
    replicas: int = Field(ge=0)
    namespace: str | None = None


class Secret(Strict):
    name: str
    namespace: str | None = None
    value: str | None = None
    rawValue: str | None = None

    _name = field_validator("name")(classmethod(lambda cls, value: dns_label(value)))


class DeleteFunctionRequest(Strict):
    functionName: str
    namespace: str | None = None
