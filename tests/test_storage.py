"""The blob store contract, run against every implementation."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from modelhall.adapters.storage import (
    BlobNotFoundError,
    BlobStore,
    BlobStoreError,
    DigestMismatchError,
    FileBlobStore,
    S3BlobStore,
    UploadNotFoundError,
    open_blob_store,
)
from modelhall.adapters.storage.s3 import S3_MIN_PART, S3Options
from modelhall.settings import Settings
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


def test_blobs_and_uploads_are_listed_with_when_they_were_last_written(make_store: Callable[[], BlobStore]) -> None:
    """What the garbage collector sweeps by: a blob's time is its publication, however old its chunks."""
    store = make_store()
    before = datetime.now(UTC) - timedelta(seconds=2)
    store.put(sha256(b"{}"), b"{}")
    pending = str(uuid.uuid4())
    writer = store.writer(pending, append=False)
    writer.write(b"half")
    writer.close()
    blobs = {item.name: item for item in store.blobs()}
    uploads = {item.name: item for item in store.uploads()}
    assert list(blobs) == [sha256(b"{}")] and blobs[sha256(b"{}")].size == 2
    assert list(uploads) == [pending] and uploads[pending].size == 4
    assert all(item.modified >= before for item in [*blobs.values(), *uploads.values()])
    store.cancel_upload(pending)
    store.delete(sha256(b"{}"))
    assert list(store.blobs()) == [] and list(store.uploads()) == []


def test_a_blob_committed_from_old_chunks_counts_as_written_when_it_was_published(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path / "store")
    upload_id = str(uuid.uuid4())
    writer = store.writer(upload_id, append=False)
    writer.write(b"chunk sent two hours ago")
    writer.close()
    two_hours_ago = (datetime.now(UTC) - timedelta(hours=2)).timestamp()
    os.utime(store._upload_path(upload_id), (two_hours_ago, two_hours_ago))
    assert next(store.uploads()).modified < datetime.now(UTC) - timedelta(hours=1)
    store.writer(upload_id, append=True).commit(sha256(b"chunk sent two hours ago"))
    assert next(store.blobs()).modified > datetime.now(UTC) - timedelta(minutes=5)

@pytest.fixture
def s3_bucket(s3_server: SeaweedFS) -> Callable[[], S3BlobStore]:
    """S3 stores over one new bucket, with S3's smallest part size so that tests stay small."""
    bucket = s3_server.new_bucket()
    options = S3Options(endpoint=s3_server.endpoint, addressing="path", part_size=S3_MIN_PART)
    return lambda: S3BlobStore(bucket, "store", options, client=s3_server.client())


def test_s3_chunks_under_the_part_size_are_gathered_into_parts(s3_bucket: Callable[[], S3BlobStore]) -> None:
    """OCI chunks of 3 MiB, each request on another instance: S3 would refuse them as parts (under 5 MiB)."""
    data, upload = bytes(range(256)) * (13 * 1024 * 4), str(uuid.uuid4())  # 13 MiB
    s3_bucket().writer(upload, append=False).close()
    for start in range(0, len(data), 3 * 1024 * 1024):
        writer = s3_bucket().writer(upload, append=True)
        writer.write(data[start:start + 3 * 1024 * 1024])
        writer.close()
    store = s3_bucket()
    assert store.upload_size(upload) == len(data)
    assert store.writer(upload, append=True).commit(sha256(data)) == len(data)
    assert b"".join(store.read(sha256(data))) == data
    assert b"".join(store.read(sha256(data), 5 * 1024 * 1024 - 3, 7)) == data[5 * 1024 * 1024 - 3:5 * 1024 * 1024 + 4]


def test_s3_session_moved_to_another_instance_is_hashed_again(s3_bucket: Callable[[], S3BlobStore]) -> None:
    """The running hash stays in the process that wrote: another instance reads the bytes back from S3."""
    data, upload = b"x" * (6 * 1024 * 1024), str(uuid.uuid4())
    first = s3_bucket().writer(upload, append=False)
    first.write(data)
    first.close()
    other = s3_bucket()
    wrong = sha256(data + b"!")
    with pytest.raises(DigestMismatchError, match=f"not {wrong}"):
        other.writer(upload, append=True).commit(wrong)
    assert other.stat(wrong) is None and other.stat(sha256(data)) is None


def test_s3_chunk_cut_short_after_a_part_was_sent_leaves_the_session_as_it_was(
        s3_bucket: Callable[[], S3BlobStore]) -> None:
    store, upload = s3_bucket(), str(uuid.uuid4())
    head, cut, rest = b"h" * (2 * 1024 * 1024), b"c" * (7 * 1024 * 1024), b"r" * (4 * 1024 * 1024)
    writer = store.writer(upload, append=False)
    writer.write(head)
    writer.close()
    writer = store.writer(upload, append=True)
    writer.write(cut)  # enough for a part: it is sent to S3 before the request ends
    writer.truncate(len(head))
    writer.close()
    assert store.upload_size(upload) == len(head)
    writer = store.writer(upload, append=True)
    writer.write(rest)
    assert writer.commit(sha256(head + rest)) == len(head + rest)
    assert b"".join(store.read(sha256(head + rest))) == head + rest


def test_s3_racing_request_that_overwrites_a_part_never_publishes_its_bytes(s3_bucket: Callable[[], S3BlobStore]) -> None:
    """Attack: two requests on one session, the second rewriting the part the first sent, while the
    first commits with the digest of its own bytes (which its running hash vouches for): what is
    published under that digest is never the other bytes."""
    store, upload, part = s3_bucket(), str(uuid.uuid4()), 5 * 1024 * 1024
    start = store.writer(upload, append=False)
    start.write(b"s" * part)  # part 1: the session has its multipart upload
    start.close()
    honest, racing = store.writer(upload, append=True), s3_bucket().writer(upload, append=True)
    honest.write(b"a" * part)
    honest.close()  # part 2 is in S3
    honest = store.writer(upload, append=True)  # its running hash vouches for s…a…
    racing.write(b"b" * part)  # part 2 again, other bytes
    racing.close()
    try:
        honest.commit(sha256(b"s" * part + b"a" * part))
    except BlobStoreError as error:  # S3 keeps the last part 2: the ETags differ
        assert "another request wrote to the same session" in str(error)
        assert store.stat(sha256(b"s" * part + b"a" * part)) is None
    else:  # a store that keeps every upload of part 2 (SeaweedFS) assembles the one whose ETag was named
        assert b"".join(store.read(sha256(b"s" * part + b"a" * part))) == b"s" * part + b"a" * part
    assert store.stat(sha256(b"s" * part + b"b" * part)) is None



def test_s3_store_is_configured_by_url_or_settings(s3_server: SeaweedFS, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    bucket = s3_server.new_bucket()
    settings = Settings(storage=f"s3://{bucket}/blobs", s3_endpoint=s3_server.endpoint, s3_addressing="path",
                        storage_redirect=False)
    store = open_blob_store(settings.storage_url, settings.s3_defaults)
    assert isinstance(store, S3BlobStore) and (store.bucket, store.prefix) == (bucket, "blobs")
    assert store.redirect_url(sha256(b"x")) is None
    store.put(sha256(b"x"), b"x")
    from_url = open_blob_store(f"{s3_server.storage_url(bucket, 'blobs')}&redirect=true", settings.s3_defaults)
    assert b"".join(from_url.read(sha256(b"x"))) == b"x"
    assert from_url.redirect_url(sha256(b"x")).startswith(f"{s3_server.endpoint}/{bucket}/blobs/blobs/sha256/")
    with pytest.raises(ValueError, match="part_size: Input should be greater than or equal to 5242880"):
        open_blob_store(s3_server.storage_url(bucket, part_size="1024"))
    with pytest.raises(ValueError, match="colour: Extra inputs are not permitted"):
        open_blob_store(s3_server.storage_url(bucket, colour="blue"))
    with pytest.raises(BlobStoreError, match="the S3 bucket 'no-such-bucket' cannot be used"):
        open_blob_store(s3_server.storage_url("no-such-bucket"))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(BlobStoreError, match=f"the S3 bucket '{bucket}' cannot be used"):
        open_blob_store(s3_server.storage_url(bucket))


def test_s3_upload_staged_under_its_claimed_digest_shows_only_once_verified(
        s3_bucket: Callable[[], S3BlobStore]) -> None:
    """Attack: claim a digest up front (as a one-request push does), then send other bytes."""
    store, claimed_content, sent = s3_bucket(), b"c" * (6 * 1024 * 1024), b"x" * (6 * 1024 * 1024)
    writer = store.writer(str(uuid.uuid4()), append=False, digest=sha256(claimed_content))
    writer.write(sent)  # a part is on its way, under the claimed digest's key
    assert store.stat(sha256(claimed_content)) is None
    with pytest.raises(DigestMismatchError):
        writer.commit(sha256(claimed_content))
    assert store.stat(sha256(claimed_content)) is None and store.stat(sha256(sent)) is None
    honest = store.writer(str(uuid.uuid4()), append=False, digest=sha256(claimed_content))
    honest.write(claimed_content)
    assert honest.commit(sha256(claimed_content)) == len(claimed_content)
    assert b"".join(store.read(sha256(claimed_content))) == claimed_content
