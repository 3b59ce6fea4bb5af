"""Blob storage, chosen by URL: ``file:///path`` or ``s3://bucket/prefix?…`` (see :mod:`.s3`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any
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
from modelhall.adapters.storage.s3 import S3BlobStore

__all__ = [
    "BlobNotFoundError", "BlobStore", "BlobStoreError", "BlobWriter", "DigestMismatchError",
    "FileBlobStore", "S3BlobStore", "StoredItem", "UploadNotFoundError", "open_blob_store",
]


def open_blob_store(url: str, s3_defaults: Mapping[str, Any] | None = None) -> BlobStore:
    """The store a URL names; ``s3_defaults`` are settings an ``s3://`` URL's query may override."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return FileBlobStore(Path(unquote(parsed.path)))
    if parsed.scheme == "s3":
        return S3BlobStore.from_url(url, s3_defaults)
    raise ValueError(f"unsupported storage URL {url!r}: use file:///path or s3://bucket/prefix")
