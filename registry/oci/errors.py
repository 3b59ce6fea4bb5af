"""OCI Distribution error codes as data, and the one handler that renders them.

Routes raise :class:`OCIError`; :func:`oci_error_response` turns it into the spec's
``{"errors": [{"code", "message", "detail"}]}`` body.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

ERROR_CODES: dict[str, tuple[int, str]] = {
    "BLOB_UNKNOWN": (404, "blob unknown to registry"),
    "BLOB_UPLOAD_INVALID": (400, "blob upload invalid"),
    "BLOB_UPLOAD_UNKNOWN": (404, "blob upload unknown to registry"),
    "DIGEST_INVALID": (400, "provided digest did not match uploaded content"),
    "MANIFEST_BLOB_UNKNOWN": (400, "manifest references a manifest or blob unknown to registry"),
    "MANIFEST_INVALID": (400, "manifest invalid"),
    "MANIFEST_UNKNOWN": (404, "manifest unknown to registry"),
    "NAME_INVALID": (400, "invalid repository name"),
    "NAME_UNKNOWN": (404, "repository name not known to registry"),
    "SIZE_INVALID": (400, "provided length did not match content length"),
    "TAG_INVALID": (400, "manifest tag did not match URI"),
    "UNAUTHORIZED": (401, "authentication required"),
    "DENIED": (403, "requested access to the resource is denied"),
    "UNSUPPORTED": (415, "the operation is unsupported"),
    "TOOMANYREQUESTS": (429, "too many requests"),
}


class OCIError(Exception):
    def __init__(self, code: str, detail: Any = None, *, status: int | None = None,
                 headers: dict[str, str] | None = None):
        default_status, self.message = ERROR_CODES[code]
        self.code = code
        self.detail = detail
        self.status = status or default_status
        self.headers = headers or {}
        super().__init__(f"{code}: {self.message}" + (f" ({detail})" if detail else ""))


async def oci_error_response(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, OCIError)
    body: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.detail is not None:
        body["detail"] = error.detail
    return JSONResponse({"errors": [body]}, status_code=error.status, headers=error.headers)
