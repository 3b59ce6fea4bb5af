"""The blob store contract, run against every implementation."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from modelhall.adapters.storage import (
    BlobNotFoundError,
    BlobStore,
    DigestMismatchError,
    FileBlobStore,
    S3BlobStore,
    UploadNotFoundError,
    open_blob_store,
)
from modelhall.adapters.storage.s3 import S3_MIN_PART, S3Options
from s3_server import SeaweedFS

def filesystem_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], BlobStore]:
    return lambda: FileBlobStore(tmp_path / "store")


def s3_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], BlobStore]:
    """A bucket of the test's own on the session's SeaweedFS; each call is a new client and hash cache."""
    server: SeaweedFS = request.getfixturevalue("s3_server")
    bucket = server.new_bucket()
    options = S3Options(endpoint=server.endpoint, addressing="path", part_size=S3_MIN_PART)
    return lambda: S3BlobStore(bucket, "store", options, client=server.client())


STORES: dict[str, Callable[[pytest.FixtureRequest, Path], Callable[[], BlobStore]]] = {
    "filesystem": filesystem_store,
    "s3": s3_store,
}


@pytest.fixture(params=sorted(STORES))
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], BlobStore]:
    """A factory: calling it again gives a new instance over the same storage, like a restart."""
    return STORES[request.param](request, tmp_path)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_commit_publishes_verified_blob(make_store: Callable[[], BlobStore]) -> None:
    store, data, upload = make_store(), b"weights" * 1000, str(uuid.uuid4())
    writer = store.writer(upload, append=False)
    writer.write(data[:100])
    writer.write(data[100:])
    assert store.stat(sha256(data)) is None
    assert writer.commit(sha256(data)) == len(data)
    assert store.stat(sha256(data)) == len(data)
    assert b"".join(store.read(sha256(data))) == data
    assert b"".join(store.read(sha256(data), 7, 5)) == data[7:12]


def test_wrong_digest_publishes_nothing(make_store: Callable[[], BlobStore]) -> None:
    store, upload = make_store(), str(uuid.uuid4())
    writer = store.writer(upload, append=False)
    writer.write(b"real content")
    claimed = sha256(b"something else")
    with pytest.raises(DigestMismatchError, match=f"not {claimed}"):
        writer.commit(claimed)
    assert store.stat(claimed) is None
    with pytest.raises(UploadNotFoundError):
        store.upload_size(upload)


def test_session_continues_in_a_new_instance(make_store: Callable[[], BlobStore]) -> None:
    data, upload = b"a" * 3000 + b"b" * 3000, str(uuid.uuid4())
    first = make_store().writer(upload, append=False)
    first.write(data[:3000])
    first.close()
    restarted = make_store()
    assert restarted.upload_size(upload) == 3000
    writer = restarted.writer(upload, append=True)
    writer.write(data[3000:])
    assert writer.commit(sha256(data)) == 6000


def test_truncate_drops_a_chunk_cut_short(make_store: Callable[[], BlobStore]) -> None:
    store, upload = make_store(), str(uuid.uuid4())
    writer = store.writer(upload, append=False)
    writer.write(b"good")
    writer.write(b"half a chu")
    writer.truncate(4)
    writer.write(b"-rest")
    assert writer.commit(sha256(b"good-rest")) == 9


def test_cancel_and_unknown_sessions(make_store: Callable[[], BlobStore]) -> None:
    store, upload = make_store(), str(uuid.uuid4())
    store.writer(upload, append=False).cancel()
    with pytest.raises(UploadNotFoundError):
        store.writer(upload, append=True)
    with pytest.raises(BlobNotFoundError):
        store.read(sha256(b"never stored"))


def test_put_and_delete(make_store: Callable[[], BlobStore]) -> None:
    store = make_store()
    store.put(sha256(b"{}"), b"{}")
    assert store.stat(sha256(b"{}")) == 2
    with pytest.raises(DigestMismatchError):
        store.put(sha256(b"x"), b"y")
    store.delete(sha256(b"{}"))
    assert store.stat(sha256(b"{}")) is None


def test_store_is_chosen_by_url(tmp_path: Path) -> None:
    assert isinstance(open_blob_store(f"file://{tmp_path}"), FileBlobStore)
    with pytest.raises(ValueError, match="unsupported storage URL 'ftp://x'"):
        open_blob_store("ftp://x")
