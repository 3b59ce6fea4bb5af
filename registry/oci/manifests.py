"""Manifests: ``PUT``/``GET``/``HEAD``/``DELETE /v2/<name>/manifests/<reference>``.

A manifest is accepted only when its digest matches, every blob and child manifest
it names is already in the repository, and, for a Modelhall bundle, its spec is valid.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from modelhall.bounded import TooDeep, load_json
from modelhall.bundle import mediatypes as mt
from modelhall.bundle.digests import digest_bytes
from modelhall.registry.auth.policy import Action
from modelhall.registry.auth.principal import Principal
from modelhall.registry.context import RegistryContext, get_context, get_db, get_principal
from modelhall.registry.db.models import Manifest, Repository
from modelhall.registry.catalog import refresh_catalog
from modelhall.registry.indexing import BundleIndex, BundleSpecInvalid, index_manifest
from modelhall.registry.metadata import (
    delete_manifest,
    delete_tag,
    find_manifest,
    find_version,
    linked_blob,
    save_manifest,
    set_tag,
)
from modelhall.registry.oci.access import outside_pinned_version, require
from modelhall.registry.oci.blobs import checked_digest
from modelhall.registry.oci.errors import OCIError

router = APIRouter()
TAG_PATTERN = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$")


def is_digest(reference: str) -> bool:
    return ":" in reference


def checked_reference(reference: str) -> str:
    """A reference to push to: a valid digest or tag, else ``DIGEST_INVALID`` or ``TAG_INVALID``."""
    if is_digest(reference):
        return checked_digest(reference)
    if not TAG_PATTERN.match(reference):
        raise OCIError("TAG_INVALID", f"{reference[:80]!r} is not a valid tag")
    return reference


def existing_reference(reference: str) -> str:
    """A reference to read or delete: one that is neither a valid tag nor a valid digest names
    no manifest, so it is ``MANIFEST_UNKNOWN`` (404), as the distribution spec's conformance asks."""
    try:
        return checked_reference(reference)
    except OCIError:
        raise OCIError("MANIFEST_UNKNOWN", f"{reference[:80]!r} is neither a valid tag nor a digest") from None


def find_by_reference(db: Session, repository: Repository, reference: str) -> Manifest:
    manifest = find_version(db, repository, reference)
    if manifest is None:
        raise OCIError("MANIFEST_UNKNOWN", reference)
    return manifest


@router.head("/v2/{name:path}/manifests/{reference}")
@router.get("/v2/{name:path}/manifests/{reference}")
def get_manifest(name: str, reference: str, request: Request, db: Session = Depends(get_db),
                 principal: Principal = Depends(get_principal),
                 context: RegistryContext = Depends(get_context)) -> Response:
    repository = require(request, db, principal, name, Action.PULL)
    manifest = find_by_reference(db, repository, existing_reference(reference))
    if outside_pinned_version(principal, context.store, manifest.digest, manifest=True):
        raise OCIError("MANIFEST_UNKNOWN", reference)
    headers = {"Docker-Content-Digest": manifest.digest, "Content-Type": manifest.media_type,
               "Content-Length": str(manifest.size)}
    if request.method == "HEAD":
        return Response(headers=headers)
    return Response(b"".join(context.store.read(manifest.digest)), headers=headers)


@router.put("/v2/{name:path}/manifests/{reference}")
async def put_manifest(name: str, reference: str, request: Request, db: Session = Depends(get_db),
                       principal: Principal = Depends(get_principal),
                       context: RegistryContext = Depends(get_context)) -> Response:
    body = await _read_limited(request, context.settings.max_manifest_bytes)
    return await run_in_threadpool(_store_manifest, name, checked_reference(reference), body, request, db,
                                   principal, context)


async def _read_limited(request: Request, limit: int) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise OCIError("SIZE_INVALID", f"manifests are limited to {limit} bytes", status=413)
    return bytes(body)


def _store_manifest(name: str, reference: str, body: bytes, request: Request, db: Session,
                    principal: Principal, context: RegistryContext) -> Response:
    repository = require(request, db, principal, name, Action.PUSH)
    digest = digest_bytes(body)
    if is_digest(reference) and reference != digest:
        raise OCIError("DIGEST_INVALID", f"the manifest's digest is {digest}, not {reference}")
    document, media_type = _parse(body, request.headers.get("content-type"))
    environment_key = None
    if principal.environment_push is not None:
        environment_key = _only_the_environment(principal.environment_push[1], reference, document)
    elif mt.ENVIRONMENT_ARTIFACT_TYPE in (document.get("artifactType"), (document.get("config") or {}).get("mediaType")):
        raise OCIError("DENIED", "environment artifacts are stored by the platform's environment builds only")
    _require_references(db, repository, document)
    index = _index(document, context)
    subject = (document.get("subject") or {}).get("digest")
    context.store.put(digest, body)
    save_manifest(db, repository, {
        "digest": digest, "media_type": media_type, "size": len(body),
        "artifact_type": document.get("artifactType") or (document.get("config") or {}).get("mediaType"),
        "subject": subject, "annotations": document.get("annotations") or {},
        "total_size": mt.version_size(body, document),
        "environment_key": environment_key,
        "spec": index.spec.to_json_dict() if index else None, "readme": index.readme if index else None,
        "thumbnail": index.thumbnail if index else None,
    })
    if not is_digest(reference):
        set_tag(db, repository, reference, digest)
    if index and index.spec.description and not repository.description:
        repository.description = index.spec.description
    refresh_catalog(db, repository)
    db.commit()
    headers = {"Location": f"/v2/{name}/manifests/{digest}", "Docker-Content-Digest": digest}
    if subject:
        headers["OCI-Subject"] = subject
    return Response(status_code=201, headers=headers)


def _parse(body: bytes, content_type: str | None) -> tuple[dict[str, Any], str]:
    """The manifest as JSON and its media type, or ``MANIFEST_INVALID`` saying what is wrong."""
    try:
        document = load_json(body)
    except TooDeep as error:
        raise OCIError("MANIFEST_INVALID", f"the manifest is refused: {error}") from None
    except (ValueError, UnicodeDecodeError):
        raise OCIError("MANIFEST_INVALID", "the manifest is not valid JSON") from None
    if not isinstance(document, dict) or document.get("schemaVersion") != 2:
        raise OCIError("MANIFEST_INVALID", "the manifest must be a JSON object with schemaVersion 2")
    declared = document.get("mediaType")
    header = (content_type or "").split(";")[0].strip()
    if declared and header and declared != header:
        raise OCIError("MANIFEST_INVALID", f"mediaType {declared!r} does not match Content-Type {header!r}")
    media_type = declared or header
    if media_type not in mt.MANIFEST_TYPES:
        raise OCIError("MANIFEST_INVALID", f"unsupported manifest media type {media_type[:100]!r}")
    if media_type in mt.IMAGE_MANIFEST_TYPES and not isinstance(document.get("config"), dict):
        raise OCIError("MANIFEST_INVALID", "an image manifest needs a config descriptor")
    for descriptor in mt.descriptors(document):
        if not isinstance(descriptor, dict) or not isinstance(descriptor.get("size"), int):
            raise OCIError("MANIFEST_INVALID", "every descriptor needs a digest and an integer size")
        checked_digest(str(descriptor.get("digest")))
    return document, media_type


def _only_the_environment(key: str, reference: str, document: dict[str, Any]) -> str:
    """What a build Job's environment push token may store: its environment's artifact, by digest, in the
    one shape ``showcase/build_environment.py`` makes (a config, one layer, the key, nothing more);
    returns the key, which only such an artifact is recorded under."""
    if not is_digest(reference):
        raise OCIError("DENIED", "an environment build may push its artifact by digest only, not a tag")
    layers = document.get("layers") or []
    if (document.get("artifactType") != mt.ENVIRONMENT_ARTIFACT_TYPE or "subject" in document
            or (document.get("config") or {}).get("mediaType") != mt.ENVIRONMENT_CONFIG_TYPE
            or len(layers) != 1 or layers[0].get("mediaType") != mt.ENVIRONMENT_LAYER_TYPE):
        raise OCIError("DENIED", "an environment build may push only an environment artifact")
    if document.get("annotations") != {mt.ANNOTATION_ENVIRONMENT_KEY: key}:
        raise OCIError("DENIED", "the artifact is not the environment this build was asked for")
    return key


def _require_references(db: Session, repository: Repository, document: dict[str, Any]) -> None:
    for descriptor in document.get("manifests") or []:
        if find_manifest(db, repository, descriptor["digest"]) is None:
            raise OCIError("MANIFEST_BLOB_UNKNOWN", descriptor["digest"])
    if "config" in document:
        for descriptor in [document["config"], *(document.get("layers") or [])]:
            link = linked_blob(db, repository, descriptor["digest"])
            if link is None:
                raise OCIError("MANIFEST_BLOB_UNKNOWN", descriptor["digest"])
            if link.size != descriptor["size"]:
                raise OCIError("MANIFEST_INVALID", f"{descriptor['digest']} has {link.size} bytes, not {descriptor['size']}")


def _index(document: dict[str, Any], context: RegistryContext) -> BundleIndex | None:
    def read_blob(digest: str, limit: int) -> bytes:
        content = bytearray()
        for chunk in context.store.read(digest):
            content += chunk
            if len(content) > limit:
                raise BundleSpecInvalid(f"{digest} is larger than the {limit} bytes a spec may have")
        return bytes(content)

    def stream_blob(digest: str) -> Iterator[bytes]:
        return context.store.read(digest)

    if "config" not in document:
        return None
    try:
        return index_manifest(document, read_blob, stream_blob)
    except BundleSpecInvalid as error:
        raise OCIError("MANIFEST_INVALID", f"invalid modelhall.yaml: {error}") from None


@router.delete("/v2/{name:path}/manifests/{reference}")
def delete_manifest_or_tag(name: str, reference: str, request: Request, db: Session = Depends(get_db),
                           principal: Principal = Depends(get_principal)) -> Response:
    repository = require(request, db, principal, name, Action.DELETE)
    manifest = find_by_reference(db, repository, existing_reference(reference))
    if is_digest(reference):
        delete_manifest(db, repository, manifest.digest)  # its bytes: see registry/gc.py
    else:
        delete_tag(db, repository, reference)
    refresh_catalog(db, repository)
    db.commit()
    return Response(status_code=202)
