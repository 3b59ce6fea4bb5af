"""A small OCI Distribution client over httpx, for the ``modelhall`` CLI.

Written here rather than taken from ``oras`` because the CLI needs what that client
lacks: per-byte progress, resumable chunked uploads and ranged, resumable downloads.
Tests use the real ``oras`` client against the registry, so both stay honest.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Generator, Iterator
from typing import Any, BinaryIO

import httpx

from modelhall.bundle import mediatypes as mt
from modelhall.client.credentials import Credentials
from modelhall.client.errors import raise_for_response

ACCEPT_MANIFESTS = ", ".join(sorted(mt.MANIFEST_TYPES))
CHUNK_SIZE = 16 * 1024 * 1024
TIMEOUT = httpx.Timeout(60.0, connect=10.0)
Progress = Callable[[int], None]


def _challenge_parameters(header: str) -> dict[str, str]:
    _, _, rest = header.partition(" ")
    parameters = {}
    for part in _split_parameters(rest):
        key, _, value = part.partition("=")
        parameters[key.strip().lower()] = value.strip().strip('"')
    return parameters


def _split_parameters(text: str) -> list[str]:
    """Split ``a="x,y",b="z"`` on the commas that are outside quotes."""
    parts, current, quoted = [], "", False
    for character in text:
        if character == '"':
            quoted = not quoted
        if character == "," and not quoted:
            parts.append(current)
            current = ""
        else:
            current += character
    return [*parts, current] if current else parts


class RegistryAuth(httpx.Auth):
    """HTTP Basic with an access token, upgraded to the Docker token flow on a Bearer challenge."""

    def __init__(self, credentials: Credentials | None):
        self._credentials = credentials
        self._bearer: str | None = None

    def _basic(self) -> str | None:
        if self._credentials is None:
            return None
        pair = f"{self._credentials.username}:{self._credentials.token}".encode()
        return "Basic " + base64.b64encode(pair).decode()

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        authorization = self._bearer or self._basic()
        if authorization:
            request.headers["Authorization"] = authorization
        response = yield request
        challenge = response.headers.get("www-authenticate", "")
        if response.status_code != 401 or not challenge.lower().startswith("bearer"):
            return
        parameters = _challenge_parameters(challenge)
        if "realm" not in parameters:  # a plain "log in first", not the token flow
            return
        self._bearer = self._fetch_token(parameters)
        request.headers["Authorization"] = self._bearer
        yield request

    def _fetch_token(self, challenge: dict[str, str]) -> str:
        params = {key: challenge[key] for key in ("service", "scope") if key in challenge}
        headers = {"Authorization": basic} if (basic := self._basic()) else {}
        response = httpx.get(challenge["realm"], params=params, headers=headers, timeout=TIMEOUT)
        raise_for_response(response, "getting a registry token")
        body = response.json()
        return "Bearer " + (body.get("token") or body["access_token"])


class RegistryClient:
    def __init__(self, base_url: str, credentials: Credentials | None):
        self.base_url = base_url.rstrip("/")
        self.http = httpx.Client(base_url=self.base_url, auth=RegistryAuth(credentials), timeout=TIMEOUT,
                                 follow_redirects=True)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, f"/api/v1{path}", **kwargs)
        raise_for_response(response, f"{method} {path}")
        return response.json()

    def blob_size(self, repository: str, digest: str) -> int | None:
        response = self.http.head(f"/v2/{repository}/blobs/{digest}")
        if response.status_code == 404:
            return None
        raise_for_response(response, f"checking {digest}")
        return int(response.headers["content-length"])

    def upload_monolithic(self, repository: str, digest: str, content: bytes) -> None:
        response = self.http.post(f"/v2/{repository}/blobs/uploads/", params={"digest": digest}, content=content,
                                  headers={"Content-Type": "application/octet-stream"})
        raise_for_response(response, f"uploading {digest}")

    def mount_blob(self, repository: str, digest: str) -> bool:
        """Link a blob another repository of the namespace holds, without sending it; False if none
        the caller may pull holds it (the registry then opens an upload session, dropped here)."""
        response = self.http.post(f"/v2/{repository}/blobs/uploads/", params={"mount": digest})
        if response.status_code == 201:
            return True
        raise_for_response(response, f"mounting {digest}")
        if location := response.headers.get("location"):
            self.http.delete(location)
        return False

    def start_upload(self, repository: str) -> str:
        response = self.http.post(f"/v2/{repository}/blobs/uploads/")
        raise_for_response(response, "starting an upload")
        return response.headers["location"]

    def upload_offset(self, location: str) -> int | None:
        """Bytes the registry holds of an upload session, or None if it is gone."""
        response = self.http.get(location)
        if response.status_code != 204:
            return None
        _, _, last = response.headers.get("range", "0-0").partition("-")
        return int(last) + 1 if int(last) > 0 else 0

    def upload_chunks(self, location: str, source: BinaryIO, offset: int, progress: Progress) -> str:
        source.seek(offset)
        while chunk := source.read(CHUNK_SIZE):
            end = offset + len(chunk) - 1
            response = self.http.patch(location, content=chunk, headers={
                "Content-Type": "application/octet-stream", "Content-Range": f"{offset}-{end}"})
            raise_for_response(response, "uploading a chunk")
            location = response.headers.get("location", location)
            offset = end + 1
            progress(len(chunk))
        return location

    def finish_upload(self, location: str, digest: str) -> None:
        response = self.http.put(location, params={"digest": digest})
        raise_for_response(response, f"completing {digest}")

    def put_manifest(self, repository: str, reference: str, manifest: bytes, media_type: str) -> str:
        response = self.http.put(f"/v2/{repository}/manifests/{reference}", content=manifest,
                                 headers={"Content-Type": media_type})
        raise_for_response(response, f"pushing the manifest of {repository}:{reference}")
        return response.headers["docker-content-digest"]

    def get_manifest(self, repository: str, reference: str) -> tuple[bytes, str]:
        response = self.http.get(f"/v2/{repository}/manifests/{reference}", headers={"Accept": ACCEPT_MANIFESTS})
        raise_for_response(response, f"reading {repository}:{reference}")
        return response.content, response.headers.get("content-type", mt.OCI_MANIFEST)

    def read_blob(self, repository: str, digest: str) -> bytes:
        response = self.http.get(f"/v2/{repository}/blobs/{digest}")
        raise_for_response(response, f"reading {digest}")
        return response.content

    def stream_blob(self, repository: str, digest: str, offset: int = 0) -> Iterator[tuple[int, Iterator[bytes]]]:
        """Yield once: the offset the registry honoured and the body's chunks."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        with self.http.stream("GET", f"/v2/{repository}/blobs/{digest}", headers=headers) as response:
            raise_for_response(response, f"downloading {digest}")
            yield (offset if response.status_code == 206 else 0), response.iter_bytes(1024 * 1024)
