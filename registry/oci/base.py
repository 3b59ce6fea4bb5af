"""``GET /v2/``: the API version check, where OCI clients learn how to log in."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from modelhall.registry.auth.principal import Principal
from modelhall.registry.context import get_principal
from modelhall.registry.oci.access import challenge
from modelhall.registry.oci.errors import OCIError

router = APIRouter()
API_VERSION_HEADER = {"Docker-Distribution-API-Version": "registry/2.0"}


@router.get("/v2/")
def get_api_version(request: Request, principal: Principal = Depends(get_principal)) -> JSONResponse:
    if principal.is_anonymous and not principal.presented_credentials:
        raise OCIError("UNAUTHORIZED", headers={**challenge(request), **API_VERSION_HEADER})
    return JSONResponse({}, headers=API_VERSION_HEADER)
