"""Errors the client raises, each mapped from what the registry said."""

from __future__ import annotations

import httpx


class RegistryError(Exception):
    """The registry refused a request; ``code`` is its OCI error code when it gave one."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        self.status = status
        self.code = code
        super().__init__(message)


class NotLoggedInError(RegistryError, PermissionError):
    pass


class NotFoundError(RegistryError, FileNotFoundError):
    pass


class DigestMismatchError(RegistryError, ValueError):
    pass


def raise_for_response(response: httpx.Response, what: str) -> None:
    if response.is_success:
        return
    response.read()
    code = detail = None
    try:
        body = response.json()
        if "errors" in body and body["errors"]:
            first = body["errors"][0]
            code, detail = first.get("code"), first.get("detail") or first.get("message")
        else:
            detail = body.get("detail")
    except ValueError:
        detail = response.text[:200] or None
    message = f"{what}: {code + ': ' if code else ''}{detail or response.reason_phrase}"
    if response.status_code == 401:
        raise NotLoggedInError(message, status=401, code=code)
    if response.status_code == 404:
        raise NotFoundError(message, status=404, code=code)
    raise RegistryError(message, status=response.status_code, code=code)
