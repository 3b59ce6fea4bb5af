"""The blob store protocol: content-addressed blobs and resumable upload sessions.

Contract every implementation keeps (``tests/test_storage.py`` runs it against each):

- A blob is visible under its digest only after its bytes were verified against that
  digest; a reader never sees a partial or wrong blob.
- An upload session is named by an id the caller chooses. Its bytes persist between
  requests and across process restarts, so any replica can continue it.
- ``BlobWriter.commit`` either publishes the verified blob or raises and publishes
  nothing; ``cancel`` throws the session's bytes away.
- ``blobs`` and ``uploads`` list what is stored with when it was last written, for the
  garbage collector (``registry/gc.py``); a blob that was just published, or an upload that
  was just written to, shows a recent ``modified``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


class BlobStoreError(Exception):
    pass


class DigestMismatchError(BlobStoreError, ValueError):
    def __init__(self, expected: str, actual: str):
        self.expected = expected
        self.actual = actual
        super().__init__(f"content has digest {actual}, not {expected}")


class BlobNotFoundError(BlobStoreError, FileNotFoundError):
    pass


class UploadNotFoundError(BlobStoreError, FileNotFoundError):
    pass


@dataclass(frozen=True)
class StoredItem:
    """A published blob (``name`` is its digest) or an upload session's bytes (``name`` is its id)."""

    name: str
    size: int
    modified: datetime  # aware, UTC: when it was last written (published, for a blob)


class BlobWriter(Protocol):
    @property
    def size(self) -> int:
        """Bytes in the session so far, including those of earlier requests."""

    def write(self, data: bytes) -> None: ...

    def truncate(self, size: int) -> None:
        """Forget bytes past ``size``: the rest of a chunk that arrived cut short.

        ``size`` is the writer's size when it was opened, or a point in what it wrote
        since (a store may refuse a point before bytes it already sent on).
        """

    def close(self) -> None:
        """Persist what was written; the session stays open for more."""

    def commit(self, digest: str) -> int:
        """Verify the bytes against ``digest`` and publish them; returns the size."""

    def cancel(self) -> None: ...


class BlobStore(Protocol):
    def writer(self, upload_id: str, *, append: bool, digest: str | None = None) -> BlobWriter:
        """Open an upload session, new (``append=False``) or existing.

        ``digest`` is what the caller says the finished blob will hash to, when it says so
        before sending the bytes (a push in one request). Only a hint: a store may stage the
        bytes under that name, and still publishes nothing that ``commit`` did not verify.
        """

    def upload_size(self, upload_id: str) -> int:
        """Bytes received by a session so far; ``UploadNotFoundError`` if there is none."""

    def cancel_upload(self, upload_id: str) -> None: ...

    def stat(self, digest: str) -> int | None:
        """The size of a published blob, or None."""

    def read(self, digest: str, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        """Stream a blob, or part of it."""

    def put(self, digest: str, data: bytes) -> None:
        """Publish small content (a manifest) in one call, verified like any upload."""

    def delete(self, digest: str) -> None: ...

    def blobs(self) -> Iterator[StoredItem]:
        """Every published blob, named by digest (for the garbage collector's sweep)."""

    def uploads(self) -> Iterator[StoredItem]:
        """Every upload session's bytes, named by upload id, finished or abandoned alike."""

    def redirect_url(self, digest: str) -> str | None:
        """A short-lived URL a client may ``GET`` the published blob from itself, or None.

        None means the registry streams the blob. Called only after the caller was
        allowed to pull it: the URL is a capability for exactly that blob.
        """
