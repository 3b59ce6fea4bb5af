"""Blobs as files on a local disk.

Layout, built in one place (:meth:`FileBlobStore._blob_path`, ``_upload_path``)::

    <root>/
    ├── blobs/
    │   └── sha256/
    │       └── ab/
    │           └── abcdef…          a published blob, named by its digest
    └── uploads/
        └── <upload id>              bytes of an upload session in progress

An upload is appended to its session file; ``commit`` fsyncs it, checks the digest and
renames it into ``blobs/`` atomically, so a reader sees a whole blob or none.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from modelhall.adapters.storage.base import BlobNotFoundError, DigestMismatchError, StoredItem, UploadNotFoundError
from modelhall.adapters.storage.hashing import HasherCache, Hashers
from modelhall.bundle.digests import InvalidDigestError, parse_digest

READ_SIZE = 4 * 1024 * 1024


class FileBlobWriter:
    def __init__(self, store: FileBlobStore, upload_id: str, append: bool):
        self._store = store
        self._upload_id = upload_id
        self._path = store._upload_path(upload_id)
        if append and not self._path.exists():
            raise UploadNotFoundError(upload_id)
        self._file = self._path.open("ab" if append else "wb")
        self._size = self._file.tell()
        self._hashers = store._hashers.take(upload_id, self._size) or self._hash_existing()

    def _hash_existing(self) -> Hashers:
        hashers = {"sha256": hashlib.sha256()}
        if self._size:
            with self._path.open("rb") as existing:
                while chunk := existing.read(READ_SIZE):
                    hashers["sha256"].update(chunk)
        return hashers

    @property
    def size(self) -> int:
        return self._size

    def write(self, data: bytes) -> None:
        self._file.write(data)
        for hasher in self._hashers.values():
            hasher.update(data)
        self._size += len(data)

    def truncate(self, size: int) -> None:
        self._file.truncate(size)
        self._file.seek(size)
        self._size = size
        self._hashers = self._hash_existing()

    def close(self) -> None:
        self._file.close()
        self._store._hashers.keep(self._upload_id, self._size, self._hashers)

    def commit(self, digest: str) -> int:
        algorithm, _ = parse_digest(digest)
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        actual = f"{algorithm}:{self._hash(algorithm)}"
        if actual != digest:
            self.cancel()
            raise DigestMismatchError(digest, actual)
        destination = self._store._blob_path(digest)
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self._path, destination)
        os.utime(destination)  # published now, however long ago the last chunk came: the collector's grace starts here
        self._store._hashers.drop(self._upload_id)
        return self._size

    def _hash(self, algorithm: str) -> str:
        if algorithm not in self._hashers:
            hasher = hashlib.new(algorithm)
            with self._path.open("rb") as written:
                while chunk := written.read(READ_SIZE):
                    hasher.update(chunk)
            self._hashers[algorithm] = hasher
        return self._hashers[algorithm].hexdigest()

    def cancel(self) -> None:
        self._file.close()
        self._store.cancel_upload(self._upload_id)


class FileBlobStore:
    def __init__(self, root: Path):
        self.root = root
        (root / "blobs").mkdir(parents=True, exist_ok=True)
        (root / "uploads").mkdir(parents=True, exist_ok=True)
        self._hashers = HasherCache()

    def _blob_path(self, digest: str) -> Path:
        algorithm, hex_ = parse_digest(digest)
        return self.root / "blobs" / algorithm / hex_[:2] / hex_

    def _upload_path(self, upload_id: str) -> Path:
        return self.root / "uploads" / str(uuid.UUID(upload_id))

    def writer(self, upload_id: str, *, append: bool, digest: str | None = None) -> FileBlobWriter:
        return FileBlobWriter(self, upload_id, append)

    def upload_size(self, upload_id: str) -> int:
        try:
            return self._upload_path(upload_id).stat().st_size
        except FileNotFoundError:
            raise UploadNotFoundError(upload_id) from None

    def cancel_upload(self, upload_id: str) -> None:
        self._hashers.drop(upload_id)
        self._upload_path(upload_id).unlink(missing_ok=True)

    def stat(self, digest: str) -> int | None:
        try:
            return self._blob_path(digest).stat().st_size
        except FileNotFoundError:
            return None

    def read(self, digest: str, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        try:
            blob = self._blob_path(digest).open("rb")
        except FileNotFoundError:
            raise BlobNotFoundError(digest) from None
        return self._chunks(blob, offset, length)

    @staticmethod
    def _chunks(blob, offset: int, length: int | None) -> Iterator[bytes]:  # type: ignore[no-untyped-def]
        with blob:
            blob.seek(offset)
            remaining = length
            while remaining is None or remaining > 0:
                chunk = blob.read(READ_SIZE if remaining is None else min(READ_SIZE, remaining))
                if not chunk:
                    return
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk

    def put(self, digest: str, data: bytes) -> None:
        upload_id = str(uuid.uuid4())
        writer = self.writer(upload_id, append=False)
        writer.write(data)
        writer.commit(digest)

    def delete(self, digest: str) -> None:
        self._blob_path(digest).unlink(missing_ok=True)

    def redirect_url(self, digest: str) -> None:
        return None  # the files are reachable through the registry only

    def blobs(self) -> Iterator[StoredItem]:
        for path in (self.root / "blobs").glob("*/*/*"):
            digest = f"{path.parent.parent.name}:{path.name}"
            try:
                if self._blob_path(digest) != path:
                    continue  # not a name this store gives a blob (a stray file): never swept
            except InvalidDigestError:
                continue
            if item := _stat_item(path, digest):
                yield item

    def uploads(self) -> Iterator[StoredItem]:
        for path in (self.root / "uploads").iterdir():
            try:
                upload_id = str(uuid.UUID(path.name))
            except ValueError:
                continue
            if upload_id == path.name and (item := _stat_item(path, upload_id)):
                yield item


def _stat_item(path: Path, name: str) -> StoredItem | None:
    """What ``path`` holds, or None if it went (committed or deleted) while the store was listed."""
    try:
        status = path.stat()
    except FileNotFoundError:
        return None
    return StoredItem(name=name, size=status.st_size, modified=datetime.fromtimestamp(status.st_mtime, UTC))
