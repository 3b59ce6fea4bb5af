"""``GET /v2/<name>/referrers/<digest>``: the manifests whose ``subject`` is that digest."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from modelhall.bundle import mediatypes as mt
from modelhall.registry.auth.policy import Action
from modelhall.registry.auth.principal import Principal
from modelhall.registry.context import get_db, get_principal
from modelhall.registry.db.models import Manifest
from modelhall.registry.metadata import referrers_of
from modelhall.registry.oci.access import require
from modelhall.registry.oci.blobs import checked_digest

router = APIRouter()


def descriptor_of(manifest: Manifest) -> dict[str, Any]:
    descriptor: dict[str, Any] = {"mediaType": manifest.media_type, "digest": manifest.digest, "size": manifest.size}
    if manifest.artifact_type:
        descriptor["artifactType"] = manifest.artifact_type
    if manifest.annotations:
        descriptor["annotations"] = manifest.annotations
    return descriptor


@router.get("/v2/{name:path}/referrers/{digest}")
def list_referrers(name: str, digest: str, request: Request, artifactType: str | None = None,  # noqa: N803
                   db: Session = Depends(get_db), principal: Principal = Depends(get_principal)) -> JSONResponse:
    repository = require(request, db, principal, name, Action.PULL)
    referrers = referrers_of(db, repository, checked_digest(digest), artifactType)
    headers = {"OCI-Filters-Applied": "artifactType"} if artifactType else {}
    index = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [descriptor_of(m) for m in referrers]}
    return JSONResponse(index, media_type=mt.OCI_INDEX, headers=headers)
