"""Pushing and pulling bundles: skip what the registry has, resume what was cut off, verify everything.

Interrupted uploads are remembered in ``<cache>/uploads.json`` (registry, repository and
digest → upload session URL) and continued from the offset the registry reports.
Downloads go to ``<cache>/blobs/…/<hex>.partial`` and continue with a ``Range`` request.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from modelhall.bundle import PackedBundle, UnpackLimits, unpack_layers
from modelhall.bundle import mediatypes as mt
from modelhall.bundle.digests import digest_bytes, parse_digest
from modelhall.client.errors import DigestMismatchError
from modelhall.client.reference import Reference
from modelhall.client.registry import RegistryClient

MONOLITHIC_LIMIT = 32 * 1024 * 1024


def cache_dir() -> Path:
    base = os.environ.get("MODELHALL_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "modelhall")
    return Path(base)


@dataclass(frozen=True)
class PushResult:
    digest: str
    uploaded: int
    skipped: int  # already in the repository, or mounted from another repository of the namespace


def progress_bar(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeRemainingColumn(), console=console, transient=False)


class _UploadSessions:
    """Upload session URLs that survive the CLI process, so a rerun resumes them."""

    def __init__(self) -> None:
        self.path = cache_dir() / "uploads.json"

    def _load(self) -> dict[str, str]:
        return json.loads(self.path.read_text()) if self.path.exists() else {}

    def get(self, key: str) -> str | None:
        return self._load().get(key)

    def put(self, key: str, location: str | None) -> None:
        entries = self._load()
        if location:
            entries[key] = location
        else:
            entries.pop(key, None)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(entries, indent=2))


def push_bundle(client: RegistryClient, reference: Reference, packed: PackedBundle, console: Console) -> PushResult:
    sessions = _UploadSessions()
    uploaded = skipped = 0
    with progress_bar(console) as progress:
        task = progress.add_task(f"push {reference}", total=sum(blob.size for blob in packed.blobs))
        for blob in packed.blobs:
            if (client.blob_size(reference.repository, blob.digest) == blob.size
                    or client.mount_blob(reference.repository, blob.digest)):
                skipped += 1
                progress.advance(task, blob.size)
                continue
            with blob.open() as source:
                if blob.size <= MONOLITHIC_LIMIT:
                    client.upload_monolithic(reference.repository, blob.digest, source.read())
                    progress.advance(task, blob.size)
                else:
                    _upload_resumable(client, reference, blob.digest, source, sessions,
                                      lambda n: progress.advance(task, n))
            uploaded += 1
    digest = client.put_manifest(reference.repository, reference.reference, packed.manifest, mt.OCI_MANIFEST)
    return PushResult(digest=digest, uploaded=uploaded, skipped=skipped)


def _upload_resumable(client: RegistryClient, reference: Reference, digest: str, source: BinaryIO,
                      sessions: _UploadSessions, advance: Callable[[int], None]) -> None:
    key = f"{reference.registry}/{reference.repository}@{digest}"
    location = sessions.get(key)
    offset = client.upload_offset(location) if location else None
    if location is None or offset is None:
        location, offset = client.start_upload(reference.repository), 0
        sessions.put(key, location)
    advance(offset)
    location = client.upload_chunks(location, source, offset, advance)
    client.finish_upload(location, digest)
    sessions.put(key, None)


@dataclass(frozen=True)
class FetchedManifest:
    document: dict[str, Any]
    digest: str
    size: int  # the version's: see mediatypes.version_size


def fetch_manifest(client: RegistryClient, reference: Reference) -> FetchedManifest:
    """The manifest, its digest and the version's size; a digest reference is checked against the bytes."""
    body, _media_type = client.get_manifest(reference.repository, reference.reference)
    digest = digest_bytes(body)
    if reference.is_digest and digest != reference.reference:
        raise DigestMismatchError(f"the registry sent a manifest with digest {digest}, not {reference.reference}")
    document = json.loads(body)
    return FetchedManifest(document, digest, mt.version_size(body, document))


def pull_bundle(client: RegistryClient, reference: Reference, target: Path, console: Console,
                limits: UnpackLimits = UnpackLimits()) -> str:
    fetched = fetch_manifest(client, reference)
    manifest, digest = fetched.document, fetched.digest
    layers = manifest.get("layers") or []
    with progress_bar(console) as progress:
        task = progress.add_task(f"pull {reference}", total=sum(layer["size"] for layer in layers))
        paths = {layer["digest"]: download_blob(client, reference.repository, layer, lambda n: progress.advance(task, n))
                 for layer in layers}

    @contextmanager
    def open_blob(blob_digest: str) -> Iterator[BinaryIO]:
        with paths[blob_digest].open("rb") as stream:
            yield stream

    unpack_layers(manifest, open_blob, target, limits)
    return digest


def download_blob(client: RegistryClient, repository: str, descriptor: dict[str, Any],
              advance: Callable[[int], None]) -> Path:
    """A verified copy of one blob in the local cache, resumed from a partial file if any."""
    digest, size = descriptor["digest"], descriptor["size"]
    algorithm, hex_ = parse_digest(digest)
    final = cache_dir() / "blobs" / algorithm / hex_
    if final.exists() and final.stat().st_size == size:
        advance(size)
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.with_suffix(".partial")
    offset = partial.stat().st_size if partial.exists() and partial.stat().st_size < size else 0
    hasher = hashlib.new(algorithm)
    for honoured, chunks in client.stream_blob(repository, digest, offset):
        with partial.open("r+b" if honoured else "wb") as out:
            if honoured:
                while block := out.read(1024 * 1024):
                    hasher.update(block)
            out.seek(honoured)
            out.truncate()
            advance(honoured)
            for chunk in chunks:
                out.write(chunk)
                hasher.update(chunk)
                advance(len(chunk))
    actual = f"{algorithm}:{hasher.hexdigest()}"
    if actual != digest:
        partial.unlink(missing_ok=True)
        raise DigestMismatchError(f"downloaded content of {digest} has digest {actual}; the copy was discarded")
    os.replace(partial, final)
    return final
