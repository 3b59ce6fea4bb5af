"""Blob uploads: monolithic, ``POST``+``PUT``, chunked ``PATCH``, status, cancel, and mount.

An upload session is a database row plus the blob store's bytes under the same id, so
a session survives a restart and any replica can continue it. The request bodies are
streamed into the store while they are hashed; nothing is buffered whole.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import TypeVar

from fastapi import APIRouter, Depends, Request, Response
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from modelhall.adapters.storage import BlobWriter, DigestMismatchError, UploadNotFoundError
from modelhall.registry.auth.policy import Action, Outcome, decide
from modelhall.registry.auth.principal import Principal
from modelhall.registry.context import RegistryContext, get_context, get_db, get_principal
from modelhall.registry.db.models import BlobLink, Repository, UploadSession
from modelhall.registry.metadata import link_blob, linked_blob
from modelhall.registry.oci.access import require
from modelhall.registry.oci.blobs import checked_digest
from modelhall.registry.oci.errors import OCIError

router = APIRouter()
CONTENT_RANGE_PATTERN = re.compile(r"^(?:bytes )?(\d+)-(\d+)(?:/\d+|/\*)?$")
T = TypeVar("T")
# Bodies reach the store in batches of this size, written off the event loop (a store may send them on to S3).
WRITE_BATCH = 1024 * 1024


async def in_thread(function: Callable[..., T], *args: object) -> T:
    """Database and blob-store work runs off the event loop, which keeps streaming bodies."""
    return await run_in_threadpool(function, *args)


def upload_location(name: str, upload_id: str) -> str:
    return f"/v2/{name}/blobs/uploads/{upload_id}"


def progress_headers(name: str, upload_id: str, size: int) -> dict[str, str]:
    return {
        "Location": upload_location(name, upload_id),
        "Range": f"0-{max(size - 1, 0)}",
        "Docker-Upload-UUID": upload_id,
    }


def blob_created(name: str, digest: str) -> Response:
    return Response(status_code=201, headers={"Location": f"/v2/{name}/blobs/{digest}",
                                              "Docker-Content-Digest": digest})


async def receive_body(request: Request, writer: BlobWriter, expected: int | None = None) -> None:
    """Append the request body to ``writer``; a body cut short is rolled back, not kept.

    ``expected`` is the chunk length its ``Content-Range`` announced.
    """
    start = writer.size
    batch = bytearray()
    try:
        async for chunk in request.stream():
            batch += chunk
            if len(batch) >= WRITE_BATCH:
                await in_thread(writer.write, bytes(batch))
                batch.clear()
        await in_thread(writer.write, bytes(batch))
    except ClientDisconnect:
        await in_thread(_roll_back, writer, start)
        raise
    received = writer.size - start
    if expected is not None and received != expected:
        await in_thread(_roll_back, writer, start)
        raise OCIError("SIZE_INVALID", f"Content-Range announced {expected} bytes, received {received}")


def _roll_back(writer: BlobWriter, size: int) -> None:
    writer.truncate(size)
    writer.close()


def check_content_range(request: Request, name: str, upload_id: str, writer: BlobWriter) -> int | None:
    """Chunks must arrive in order: a ``Content-Range`` must start where the upload stands.

    Returns the chunk's announced length, or None when the request has no ``Content-Range``.
    """
    header = request.headers.get("content-range")
    if header is None:
        return None
    match = CONTENT_RANGE_PATTERN.match(header.strip())
    if not match or int(match.group(1)) != writer.size or int(match.group(2)) < int(match.group(1)):
        writer.close()
        raise OCIError("BLOB_UPLOAD_INVALID",
                       f"chunk {header[:40]!r} does not continue the upload at byte {writer.size}",
                       status=416, headers=progress_headers(name, upload_id, writer.size))
    return int(match.group(2)) - int(match.group(1)) + 1


def _commit(writer: BlobWriter, digest: str) -> int:
    try:
        return writer.commit(digest)
    except DigestMismatchError as error:
        raise OCIError("DIGEST_INVALID", str(error)) from None


def _finish(db: Session, repository: Repository, digest: str, size: int, session_id: str | None) -> None:
    link_blob(db, repository, digest, size)
    if session_id:
        session = db.get(UploadSession, session_id)
        if session:
            db.delete(session)
    db.commit()


@router.post("/v2/{name:path}/blobs/uploads/")
async def start_blob_upload(name: str, request: Request, db: Session = Depends(get_db),
                            principal: Principal = Depends(get_principal),
                            context: RegistryContext = Depends(get_context)) -> Response:
    repository = await in_thread(require, request, db, principal, name, Action.PUSH)
    mounted = request.query_params.get("mount")
    if mounted and await in_thread(_mount, db, principal, repository, checked_digest(mounted),
                                   request.query_params.get("from", "")):
        return blob_created(name, mounted)
    digest = request.query_params.get("digest")
    upload_id = str(uuid.uuid4())
    if digest:
        checked_digest(digest)
        writer = context.store.writer(upload_id, append=False, digest=digest)
        try:
            await receive_body(request, writer)
        except (ClientDisconnect, OCIError):
            await in_thread(context.store.cancel_upload, upload_id)
            raise
        size = await in_thread(_commit, writer, digest)
        await in_thread(_finish, db, repository, digest, size, None)
        return blob_created(name, digest)
    await in_thread(lambda: context.store.writer(upload_id, append=False).close())
    db.add(UploadSession(id=upload_id, repository_id=repository.id))
    await in_thread(db.commit)
    return Response(status_code=202, headers=progress_headers(name, upload_id, 0))


def _mount(db: Session, principal: Principal, repository: Repository, digest: str, source: str) -> bool:
    """Link a blob without sending it again, from ``source`` or, without one, from another repository
    of the same namespace; only where the caller may pull it. False: upload it instead."""
    names = [source] if source else _namespace_holders(db, repository, digest)
    for name in names:
        outcome, source_repository = decide(db, principal, name, Action.PULL)
        link = linked_blob(db, source_repository, digest) if outcome is Outcome.ALLOW and source_repository else None
        if link is not None:
            link_blob(db, repository, digest, link.size)
            db.commit()
            return True
    return False


def _namespace_holders(db: Session, repository: Repository, digest: str, limit: int = 20) -> list[str]:
    """Other repositories of ``repository``'s namespace that hold ``digest`` (the spec's mount without ``from``)."""
    return list(db.scalars(select(Repository.name).join(BlobLink, BlobLink.repository_id == Repository.id).where(
        Repository.namespace == repository.namespace, Repository.id != repository.id, BlobLink.digest == digest,
    ).order_by(Repository.name).limit(limit)))


def _session(db: Session, repository: Repository, upload_id: str) -> UploadSession:
    try:
        uuid.UUID(upload_id)
    except ValueError:
        raise OCIError("BLOB_UPLOAD_UNKNOWN", upload_id[:64]) from None
    session = db.get(UploadSession, upload_id)
    if session is None or session.repository_id != repository.id:
        raise OCIError("BLOB_UPLOAD_UNKNOWN", upload_id)
    return session


def _open_session(db: Session, context: RegistryContext, request: Request, principal: Principal,
                  name: str, upload_id: str, digest: str | None = None) -> tuple[Repository, BlobWriter]:
    repository = require(request, db, principal, name, Action.PUSH)
    _session(db, repository, upload_id)
    try:
        return repository, context.store.writer(upload_id, append=True, digest=digest)
    except UploadNotFoundError:
        raise OCIError("BLOB_UPLOAD_UNKNOWN", upload_id) from None


@router.patch("/v2/{name:path}/blobs/uploads/{upload_id}")
async def patch_blob_data(name: str, upload_id: str, request: Request, db: Session = Depends(get_db),
                          principal: Principal = Depends(get_principal),
                          context: RegistryContext = Depends(get_context)) -> Response:
    _repository, writer = await in_thread(_open_session, db, context, request, principal, name, upload_id)
    await receive_body(request, writer, check_content_range(request, name, upload_id, writer))
    await in_thread(writer.close)
    return Response(status_code=202, headers=progress_headers(name, upload_id, writer.size))


@router.put("/v2/{name:path}/blobs/uploads/{upload_id}")
async def put_blob_upload(name: str, upload_id: str, request: Request, db: Session = Depends(get_db),
                          principal: Principal = Depends(get_principal),
                          context: RegistryContext = Depends(get_context)) -> Response:
    digest = request.query_params.get("digest")
    if not digest:
        raise OCIError("DIGEST_INVALID", "the digest query parameter is required to complete an upload")
    checked_digest(digest)
    repository, writer = await in_thread(_open_session, db, context, request, principal, name, upload_id, digest)
    await receive_body(request, writer, check_content_range(request, name, upload_id, writer))
    try:
        size = await in_thread(_commit, writer, digest)
    except OCIError:
        await in_thread(_forget_session, db, upload_id)
        raise
    await in_thread(_finish, db, repository, digest, size, upload_id)
    return blob_created(name, digest)


def _forget_session(db: Session, upload_id: str) -> None:
    session = db.get(UploadSession, upload_id)
    if session:
        db.delete(session)
        db.commit()


@router.get("/v2/{name:path}/blobs/uploads/{upload_id}")
def get_blob_upload(name: str, upload_id: str, request: Request, db: Session = Depends(get_db),
                    principal: Principal = Depends(get_principal),
                    context: RegistryContext = Depends(get_context)) -> Response:
    repository = require(request, db, principal, name, Action.PUSH)
    _session(db, repository, upload_id)
    try:
        size = context.store.upload_size(upload_id)
    except UploadNotFoundError:
        raise OCIError("BLOB_UPLOAD_UNKNOWN", upload_id) from None
    return Response(status_code=204, headers=progress_headers(name, upload_id, size))


@router.delete("/v2/{name:path}/blobs/uploads/{upload_id}")
def cancel_blob_upload(name: str, upload_id: str, request: Request, db: Session = Depends(get_db),
                       principal: Principal = Depends(get_principal),
                       context: RegistryContext = Depends(get_context)) -> Response:
    repository = require(request, db, principal, name, Action.PUSH)
    db.delete(_session(db, repository, upload_id))
    context.store.cancel_upload(upload_id)
    db.commit()
    return Response(status_code=204)
