"""Blobs: ``HEAD``/``GET`` (with ``Range``) and ``DELETE /v2/<name>/blobs/<digest>``."""

from __future__ import annotations

import re

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from modelhall.bundle.digests import InvalidDigestError, parse_digest
from modelhall.registry.auth.policy import Action
from modelhall.registry.auth.principal import Principal
from modelhall.registry.context import RegistryContext, get_context, get_db, get_principal
from modelhall.registry.metadata import linked_blob, unlink_blob
from modelhall.registry.oci.access import outside_pinned_version, require
from modelhall.registry.oci.errors import OCIError

router = APIRouter()
RANGE_PATTERN = re.compile(r"^bytes=(\d*)-(\d*)$")


def checked_digest(digest: str) -> str:
    try:
        parse_digest(digest)
    except InvalidDigestError as error:
        raise OCIError("DIGEST_INVALID", str(error)) from None
    return digest


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive ``(first, last)`` byte of a single-range ``Range`` header, or None for all."""
    if not header:
        return None
    match = RANGE_PATTERN.match(header.strip())
    if not match or match.groups() == ("", ""):
        raise OCIError("BLOB_UNKNOWN", f"unsupported range {header[:40]!r}", status=416,
                       headers={"Content-Range": f"bytes */{size}"})
    first, last = match.groups()
    if first == "":
        start, end = max(size - int(last), 0), size - 1
    else:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    if start >= size or start > end:
        raise OCIError("BLOB_UNKNOWN", f"range {header[:40]!r} is outside the blob's {size} bytes", status=416,
                       headers={"Content-Range": f"bytes */{size}"})
    return start, end


@router.head("/v2/{name:path}/blobs/{digest}")
@router.get("/v2/{name:path}/blobs/{digest}")
def get_blob(name: str, digest: str, request: Request, db: Session = Depends(get_db),
             principal: Principal = Depends(get_principal),
             context: RegistryContext = Depends(get_context)) -> Response:
    repository = require(request, db, principal, name, Action.PULL)
    link = linked_blob(db, repository, checked_digest(digest))
    if outside_pinned_version(principal, context.store, digest, manifest=False):
        link = None
    size = context.store.stat(digest) if link else None
    if size is None:
        raise OCIError("BLOB_UNKNOWN", digest)
    headers = {"Docker-Content-Digest": digest, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
    selected = byte_range(request.headers.get("range"), size)
    status, (start, end) = (206, selected) if selected else (200, (0, size - 1))
    headers["Content-Length"] = str(end - start + 1)
    if selected:
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers)
    return StreamingResponse(context.store.read(digest, start, end - start + 1), status_code=status, headers=headers)


@router.delete("/v2/{name:path}/blobs/{digest}")
def delete_blob(name: str, digest: str, request: Request, db: Session = Depends(get_db),
                principal: Principal = Depends(get_principal),
                context: RegistryContext = Depends(get_context)) -> Response:
    repository = require(request, db, principal, name, Action.DELETE)
    if linked_blob(db, repository, checked_digest(digest)) is None:
        raise OCIError("BLOB_UNKNOWN", digest)
    if unlink_blob(db, repository, digest):
        context.store.delete(digest)
    db.commit()
    return Response(status_code=202, headers={"Docker-Content-Digest": digest})
