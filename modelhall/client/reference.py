"""Parsing ``owner/name:tag`` and ``host[:port]/owner/name[:tag|@digest]`` references."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlparse

DEFAULT_TAG = "latest"
TAG_PATTERN = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$")


class InvalidReferenceError(ValueError):
    pass


@dataclass(frozen=True)
class Reference:
    registry: str          # base URL, e.g. http://127.0.0.1:8600
    repository: str        # owner/name
    reference: str         # tag or digest

    @property
    def host(self) -> str:
        return urlparse(self.registry).netloc

    @property
    def is_digest(self) -> bool:
        return ":" in self.reference

    def __str__(self) -> str:
        separator = "@" if self.is_digest else ":"
        return f"{self.host}/{self.repository}{separator}{self.reference}"


def _looks_like_host(component: str) -> bool:
    return "." in component or ":" in component or component == "localhost"


def registry_url(host: str) -> str:
    scheme = "http" if host.split(":")[0] in ("localhost", "127.0.0.1") or host.startswith("[::1]") else "https"
    return f"{scheme}://{host}"


def parse_reference(text: str, default_registry: str) -> Reference:
    """``alice/snow-gan:v1`` against ``default_registry``, or a full ``host/alice/snow-gan:v1``."""
    registry = default_registry.rstrip("/")
    rest = text
    first, _, remainder = text.partition("/")
    if remainder and _looks_like_host(first):
        default_host = urlparse(registry).netloc
        registry = registry if first == default_host else registry_url(first)
        rest = remainder
    if "@" in rest:
        repository, _, reference = rest.partition("@")
    else:
        repository, colon, tag = rest.rpartition(":")
        if not colon or "/" in tag:
            repository, reference = rest, DEFAULT_TAG
        else:
            reference = tag
            if not TAG_PATTERN.match(tag):
                raise InvalidReferenceError(f"{tag!r} is not a valid tag")
    if repository.count("/") < 1:
        raise InvalidReferenceError(f"{text!r} should look like owner/name:tag")
    return Reference(registry=registry, repository=repository, reference=reference)
