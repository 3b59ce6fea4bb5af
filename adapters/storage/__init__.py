"""Blob storage, chosen by URL: ``file:///path`` (``s3://`` joins in a later issue)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from modelhall.adapters.storage.base import (
    BlobNotFoundError,
    BlobStore,
    BlobStoreError,
    BlobWriter,
    DigestMismatchError,
    StoredItem,
    UploadNotFoundError,
)
from modelhall.adapters.storage.filesystem import FileBlobStore

__all__ = [
    "BlobNotFoundError", "BlobStore", "BlobStoreError", "BlobWriter", "DigestMismatchError",
    "FileBlobStore", "StoredItem", "UploadNotFoundError", "open_blob_store",
]


def open_blob_store(url: str) -> BlobStore:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return FileBlobStore(Path(unquote(parsed.path)))
    raise ValueError(f"unsupported storage URL {url!r}: use file:///path")
