"""Content digests (``sha256:<hex>``) as the OCI image spec defines them."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import BinaryIO

DIGEST_PATTERN = re.compile(r"^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$")
READ_SIZE = 1024 * 1024


class InvalidDigestError(ValueError):
    pass


def parse_digest(digest: str) -> tuple[str, str]:
    """Split ``sha256:<hex>`` into algorithm and hex, refusing anything malformed."""
    if not DIGEST_PATTERN.match(digest):
        raise InvalidDigestError(f"{digest[:80]!r} is not a sha256 or sha512 digest")
    algorithm, _, hex_ = digest.partition(":")
    return algorithm, hex_


def digest_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def digest_stream(stream: BinaryIO, algorithm: str = "sha256") -> tuple[str, int]:
    hasher = hashlib.new(algorithm)
    size = 0
    while chunk := stream.read(READ_SIZE):
        hasher.update(chunk)
        size += len(chunk)
    return f"{algorithm}:{hasher.hexdigest()}", size


def digest_file(path: Path) -> tuple[str, int]:
    with path.open("rb") as stream:
        return digest_stream(stream)
