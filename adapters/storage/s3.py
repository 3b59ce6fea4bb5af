"""Blobs in an S3-compatible object store, through boto3.

Layout under ``s3://<bucket>/<prefix>/``, built in one place (:meth:`S3BlobStore._key`)::

    blobs/sha256/ab/abcdef…               a published blob, named by its digest
    uploads/<upload id>/state             an upload session (JSON, :class:`SessionState`)
    uploads/<upload id>/tail-<random>     the session's bytes after its last part
    uploads/<upload id>/data-<random>     the key of the session's S3 multipart upload

A session's bytes are the parts of one S3 multipart upload followed by a *tail* object.
S3 refuses parts under 5 MiB except the last, and OCI clients send chunks of any size,
so chunks are gathered in memory into parts of ``part_size``; what is left when a
request ends is stored as the tail and read back by the next request, which puts it in
front of its own bytes (distribution's s3 driver re-assembles a short last part the
same way). The state object is written last when a request ends, with a new version:
a request cut short, or a process that dies mid-request, leaves the session as the
request found it, and any replica can continue it.

``commit`` sends the tail as the last part, assembles the upload and checks the digest:
with the running hash only if this process saw every byte since the state it opened
was written (and S3 still holds exactly the parts it sent), else by reading the
assembled object back from S3. Only then is the object copied under its digest.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC
from concurrent.futures import Future, ThreadPoolExecutor, wait
from collections.abc import Iterator, Mapping
from typing import Any, Literal
from urllib.parse import parse_qsl, urlparse

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modelhall.adapters.storage.base import (
    BlobNotFoundError,
    BlobStoreError,
    DigestMismatchError,
    StoredItem,
    UploadNotFoundError,
)
from modelhall.adapters.storage.hashing import HasherCache, Hashers
from modelhall.bundle.digests import InvalidDigestError, parse_digest

MiB = 1024 * 1024
S3_MIN_PART = 5 * MiB
S3_MAX_PARTS = 10_000
S3_MAX_COPY = 5 * 1024 * MiB  # a larger object is copied part by part
READ_SIZE = 4 * MiB
PARTS_IN_FLIGHT = 2  # per upload, beside the one being gathered
MISSING = {"404", "NoSuchKey", "NotFound"}


class S3Options(BaseModel):
    """What an ``s3://bucket/prefix?…`` URL may say; each also comes from settings (the URL wins)."""

    model_config = ConfigDict(extra="forbid")

    endpoint: str | None = None  # None: AWS, or AWS_ENDPOINT_URL(_S3)
    region: str | None = None  # None: AWS_REGION / the profile's
    addressing: Literal["auto", "path", "virtual"] = "auto"
    redirect: bool = True  # blob GETs answer with a presigned URL
    presign_ttl: int = Field(default=120, ge=1, le=3600)  # seconds a presigned URL stays valid
    part_size: int = Field(default=8 * MiB, ge=S3_MIN_PART, le=S3_MAX_COPY)  # bytes; memory per upload: 3 parts


class Part(BaseModel):
    number: int
    etag: str
    size: int


class SessionState(BaseModel):
    """An upload session as S3 holds it between requests."""

    version: str = Field(default_factory=lambda: uuid.uuid4().hex)
    multipart_id: str | None = None
    data_key: str | None = None
    parts: list[Part] = Field(default_factory=list)
    tail_key: str | None = None
    tail_size: int = 0

    @property
    def parts_size(self) -> int:
        return sum(part.size for part in self.parts)

    @property
    def size(self) -> int:
        return self.parts_size + self.tail_size


def parse_s3_url(url: str, defaults: Mapping[str, Any] | None = None) -> tuple[str, str, S3Options]:
    """``s3://bucket/prefix?endpoint=…&region=…&addressing=path&redirect=false`` → bucket, prefix, options."""
    parsed = urlparse(url)
    if not parsed.netloc:
        raise ValueError(f"storage URL {url!r} names no bucket: use s3://bucket/prefix")
    query = dict(parse_qsl(parsed.query, strict_parsing=False))
    settings = {key: value for key, value in (defaults or {}).items() if value is not None}
    try:
        options = S3Options(**{**settings, **query})
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise ValueError(f"storage URL s3://{parsed.netloc}{parsed.path}: {problems}") from None
    return parsed.netloc, parsed.path.strip("/"), options


def _is_missing(error: ClientError) -> bool:
    return str(error.response.get("Error", {}).get("Code")) in MISSING


class S3BlobWriter:
    def __init__(self, store: S3BlobStore, upload_id: str, append: bool, claimed: str | None = None):
        self._store = store
        self._claimed = claimed
        self._id = str(uuid.UUID(upload_id))
        self._append = append
        if append:
            self._opened = store._load_state(self._id)
            hashers = store._hashers.take(self._id, self._opened.version)
        else:
            self._opened = SessionState()
            hashers = {"sha256": hashlib.sha256()}
        self._state = self._opened.model_copy(deep=True)
        self._tail = store._read_tail(self._opened)
        self._opened_hashers = hashers
        self._hashers: Hashers | None = self._copy(hashers)
        self._sending: list[tuple[int, int, Future[dict[str, Any]]]] = []  # parts on their way: number, size

    @staticmethod
    def _copy(hashers: Hashers | None) -> Hashers | None:
        return {name: hasher.copy() for name, hasher in hashers.items()} if hashers is not None else None

    @property
    def size(self) -> int:
        return self._state.parts_size + sum(size for _, size, _ in self._sending) + len(self._tail)

    def write(self, data: bytes) -> None:
        self._tail += data
        for hasher in (self._hashers or {}).values():
            hasher.update(data)
        if len(self._tail) >= self._store.options.part_size:
            self._send_part()

    def _send_part(self) -> None:
        """Send the gathered bytes as the next part, in the background while the request's next bytes arrive."""
        client, bucket = self._store.client, self._store.bucket
        if self._state.multipart_id is None:
            self._state.data_key = self._staging_key()
            created = client.create_multipart_upload(Bucket=bucket, Key=self._state.data_key)
            self._state.multipart_id = created["UploadId"]
        number = (self._state.parts[-1].number if self._state.parts else 0) + len(self._sending) + 1
        if number > S3_MAX_PARTS:
            raise BlobStoreError(f"the upload is larger than {S3_MAX_PARTS} parts of {self._store.options.part_size} bytes")
        body, self._tail = self._tail, bytearray()  # handed over, not copied
        while len(self._sending) >= PARTS_IN_FLIGHT:
            self._settle_oldest()
        sent = self._store._senders.submit(client.upload_part, Bucket=bucket, Key=self._state.data_key,
                                           UploadId=self._state.multipart_id, PartNumber=number, Body=body)
        self._sending.append((number, len(body), sent))

    def _staging_key(self) -> str:
        """Where the multipart upload assembles the bytes.

        Straight under the claimed digest when this writer hashes every byte of the session
        itself: S3 shows a multipart upload's object only once it is completed, and it is
        completed only after the hash matched (else aborted), so no copy is needed.
        """
        if self._claimed and self._hashers is not None and parse_digest(self._claimed)[0] in self._hashers:
            return self._store._blob_key(self._claimed)
        return self._store._upload_key(self._id, f"data-{uuid.uuid4().hex}")

    def _settle_oldest(self) -> None:
        number, size, sent = self._sending.pop(0)
        self._state.parts.append(Part(number=number, etag=sent.result()["ETag"], size=size))

    def _settle(self) -> None:
        """Wait until every part this writer sent is in S3 (and in its state)."""
        while self._sending:
            self._settle_oldest()

    def truncate(self, size: int) -> None:
        self._settle()
        sent_since_opened = self._state.parts != self._opened.parts
        if size == self._opened.size and sent_since_opened:
            self._revert()
        elif self._state.parts_size <= size <= self.size:
            del self._tail[size - self._state.parts_size:]
            trusted_again = size == self._opened.size
            self._hashers = self._copy(self._opened_hashers) if trusted_again else None
        else:
            raise BlobStoreError(f"an S3 upload cannot be cut back to byte {size}: its parts up to byte "
                                 f"{self._state.parts_size} are sent")

    def _revert(self) -> None:
        """Back to the session as this writer found it: parts sent since are left out of it."""
        if self._state.multipart_id and self._opened.multipart_id is None:
            self._store._abort(self._state.data_key, self._state.multipart_id)
        self._state = self._opened.model_copy(deep=True)
        self._tail = self._store._read_tail(self._opened)
        self._hashers = self._copy(self._opened_hashers)

    def close(self) -> None:
        """Store the tail and then the state, so the session moves on in one step."""
        self._settle()
        unchanged = self._append and self._state.parts == self._opened.parts and len(self._tail) == self._opened.tail_size
        if not unchanged:
            state = self._state.model_copy(update={"version": uuid.uuid4().hex, "tail_key": None, "tail_size": 0})
            if self._tail:
                state.tail_key = self._store._upload_key(self._id, f"tail-{uuid.uuid4().hex}")
                state.tail_size = len(self._tail)
                self._store._put(state.tail_key, bytes(self._tail))
            self._store._put(self._store._upload_key(self._id, "state"), state.model_dump_json().encode())
            if self._opened.tail_key and self._opened.tail_key != state.tail_key:
                self._store._delete(self._opened.tail_key)
            self._opened, self._state = state, state.model_copy(deep=True)
            self._opened_hashers = self._copy(self._hashers)
        if self._hashers is not None:
            self._store._hashers.keep(self._id, self._opened.version, self._hashers)

    def commit(self, digest: str) -> int:
        algorithm, _ = parse_digest(digest)
        size = self.size
        if not self._state.parts and not self._sending:
            content = bytes(self._tail)
            hasher = (self._hashers or {}).get(algorithm) or hashlib.new(algorithm, content)
            self._verify(digest, f"{algorithm}:{hasher.hexdigest()}")
            self._store._put(self._store._blob_key(digest), content)
        else:
            self._publish_parts(digest, algorithm)
        self._store._forget_session(self._id)
        return size

    def _publish_parts(self, digest: str, algorithm: str) -> None:
        store, data_key = self._store, self._state.data_key
        assert data_key is not None and self._state.multipart_id is not None
        if self._tail:
            self._send_part()
        self._settle()
        hasher = (self._hashers or {}).get(algorithm)
        if hasher is not None and self._append and store._load_state(self._id).version != self._opened.version:
            hasher = None  # another request moved the session on since this one opened it
        staged_as_blob = data_key.startswith(store._key("blobs", ""))
        if staged_as_blob and (hasher is None or data_key != store._blob_key(digest)):
            self.cancel()
            raise BlobStoreError("the upload cannot be verified before it is published: "
                                 "the session changed while this request wrote to it; start it again")
        if hasher is not None:
            self._verify(digest, f"{algorithm}:{hasher.hexdigest()}")  # before S3 assembles anything
        if store._sent_parts(data_key, self._state.multipart_id) != {p.number: p.etag for p in self._state.parts}:
            self.cancel()
            raise BlobStoreError("the upload's parts changed while it was committed: "
                                 "another request wrote to the same session at the same time")
        assembled = store.client.complete_multipart_upload(
            Bucket=store.bucket, Key=data_key, UploadId=self._state.multipart_id,
            MultipartUpload={"Parts": [{"PartNumber": p.number, "ETag": p.etag} for p in self._state.parts]})
        if hasher is None:
            self._verify(digest, f"{algorithm}:{store._hash_object(data_key, algorithm)}")
        if not staged_as_blob:
            store._copy(data_key, store._blob_key(digest), self.size, assembled["ETag"])

    def _verify(self, digest: str, actual: str) -> None:
        if actual != digest:
            self.cancel()
            raise DigestMismatchError(digest, actual)

    def cancel(self) -> None:
        wait([sent for _, _, sent in self._sending])
        if self._state.multipart_id and self._state.multipart_id != self._opened.multipart_id:
            self._store._abort(self._state.data_key, self._state.multipart_id)
        self._store.cancel_upload(self._id)


class S3BlobStore:
    def __init__(self, bucket: str, prefix: str = "", options: S3Options | None = None, client: Any = None):
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.options = options or S3Options()
        self.client = client or boto3.session.Session().client(
            "s3", endpoint_url=self.options.endpoint, region_name=self.options.region,
            config=Config(s3={"addressing_style": self.options.addressing}, signature_version="s3v4",
                          max_pool_connections=32, retries={"mode": "standard"}))
        self._hashers = HasherCache()
        self._senders = ThreadPoolExecutor(max_workers=8, thread_name_prefix="s3-parts")
        try:
            self.client.head_bucket(Bucket=bucket)
        except (ClientError, BotoCoreError) as error:
            raise BlobStoreError(f"the S3 bucket {bucket!r} cannot be used: {error}") from None

    @classmethod
    def from_url(cls, url: str, defaults: Mapping[str, Any] | None = None) -> S3BlobStore:
        bucket, prefix, options = parse_s3_url(url, defaults)
        return cls(bucket, prefix, options)

    def _key(self, *parts: str) -> str:
        return "/".join([self.prefix, *parts] if self.prefix else parts)

    def _blob_key(self, digest: str) -> str:
        algorithm, hex_ = parse_digest(digest)
        return self._key("blobs", algorithm, hex_[:2], hex_)

    def _upload_key(self, upload_id: str, name: str) -> str:
        return self._key("uploads", str(uuid.UUID(upload_id)), name)

    def _put(self, key: str, body: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=body)

    def _delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=key)

    def _load_state(self, upload_id: str) -> SessionState:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._upload_key(upload_id, "state"))["Body"]
        except ClientError as error:
            if _is_missing(error):
                raise UploadNotFoundError(upload_id) from None
            raise
        try:
            return SessionState.model_validate_json(body.read())
        except ValidationError:
            raise BlobStoreError(f"the state of upload {upload_id} in S3 is damaged") from None

    def _read_tail(self, state: SessionState) -> bytearray:
        if not state.tail_key:
            return bytearray()
        tail = bytearray(self.client.get_object(Bucket=self.bucket, Key=state.tail_key)["Body"].read())
        if len(tail) != state.tail_size:
            raise BlobStoreError(f"an upload's tail in S3 has {len(tail)} bytes, its state says {state.tail_size}")
        return tail

    def _sent_parts(self, key: str, multipart_id: str) -> dict[int, str]:
        pages = self.client.get_paginator("list_parts").paginate(Bucket=self.bucket, Key=key, UploadId=multipart_id)
        return {part["PartNumber"]: part["ETag"] for page in pages for part in page.get("Parts", [])}

    def _hash_object(self, key: str, algorithm: str) -> str:
        hasher = hashlib.new(algorithm)
        body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        for chunk in body.iter_chunks(READ_SIZE):
            hasher.update(chunk)
        return hasher.hexdigest()

    def _copy(self, source: str, destination: str, size: int, etag: str) -> None:
        copy_source = {"Bucket": self.bucket, "Key": source}
        if size <= S3_MAX_COPY:
            self.client.copy_object(Bucket=self.bucket, Key=destination, CopySource=copy_source,
                                    CopySourceIfMatch=etag)
        else:
            self.client.copy(copy_source, self.bucket, destination,
                             Config=TransferConfig(multipart_threshold=S3_MAX_COPY, multipart_chunksize=S3_MAX_COPY // 4))
        self._delete(source)

    def _abort(self, key: str | None, multipart_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=multipart_id)
        except ClientError as error:
            if str(error.response.get("Error", {}).get("Code")) not in {"NoSuchUpload", *MISSING}:
                raise

    def _forget_session(self, upload_id: str) -> None:
        """Delete every object of a session: its state, tails and assembled data."""
        self._hashers.drop(upload_id)
        prefix = self._upload_key(upload_id, "")
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        for page in pages:
            for item in page.get("Contents", []):
                self._delete(item["Key"])

    def writer(self, upload_id: str, *, append: bool, digest: str | None = None) -> S3BlobWriter:
        return S3BlobWriter(self, upload_id, append, digest)

    def upload_size(self, upload_id: str) -> int:
        return self._load_state(upload_id).size

    def cancel_upload(self, upload_id: str) -> None:
        try:
            state = self._load_state(upload_id)
        except UploadNotFoundError:
            state = None
        if state and state.multipart_id:
            self._abort(state.data_key, state.multipart_id)
        self._forget_session(upload_id)

    def stat(self, digest: str) -> int | None:
        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=self._blob_key(digest))["ContentLength"])
        except ClientError as error:
            if _is_missing(error):
                return None
            raise

    def read(self, digest: str, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        request: dict[str, str] = {"Bucket": self.bucket, "Key": self._blob_key(digest)}
        if length == 0:
            return iter(())
        if offset or length is not None:
            request["Range"] = f"bytes={offset}-{offset + length - 1 if length is not None else ''}"
        try:
            body = self.client.get_object(**request)["Body"]
        except ClientError as error:
            if _is_missing(error):
                raise BlobNotFoundError(digest) from None
            raise
        return self._chunks(body)

    @staticmethod
    def _chunks(body: Any) -> Iterator[bytes]:
        try:
            yield from body.iter_chunks(READ_SIZE)
        finally:
            body.close()

    def put(self, digest: str, data: bytes) -> None:
        algorithm, _ = parse_digest(digest)
        actual = f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"
        if actual != digest:
            raise DigestMismatchError(digest, actual)
        self._put(self._blob_key(digest), data)

    def delete(self, digest: str) -> None:
        self._delete(self._blob_key(digest))

    def _listed(self, *parts: str) -> Iterator[dict[str, Any]]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._key(*parts))
        for page in pages:
            yield from page.get("Contents", [])

    def blobs(self) -> Iterator[StoredItem]:
        for item in self._listed("blobs", ""):
            algorithm, _, hex_ = item["Key"].removeprefix(self._key("blobs", "")).partition("/")
            digest = f"{algorithm}:{hex_.rpartition('/')[2]}"
            try:
                if self._blob_key(digest) != item["Key"]:
                    continue  # not a name this store gives a blob (a stray object): never swept
            except InvalidDigestError:
                continue
            yield StoredItem(name=digest, size=int(item["Size"]), modified=item["LastModified"].astimezone(UTC))

    def uploads(self) -> Iterator[StoredItem]:
        """Each session by its state object: when it was last written is when a request last ended."""
        for item in self._listed("uploads", ""):
            upload_id, _, name = item["Key"].removeprefix(self._key("uploads", "")).partition("/")
            if name != "state":
                continue
            try:
                size = self._load_state(upload_id).size
            except (UploadNotFoundError, BlobStoreError):  # finished meanwhile, or damaged: its own size then
                size = int(item["Size"])
            yield StoredItem(name=upload_id, size=size, modified=item["LastModified"].astimezone(UTC))

    def redirect_url(self, digest: str) -> str | None:
        if not self.options.redirect:
            return None
        return self.client.generate_presigned_url("get_object", ExpiresIn=self.options.presign_ttl,
                                                  Params={"Bucket": self.bucket, "Key": self._blob_key(digest)})
