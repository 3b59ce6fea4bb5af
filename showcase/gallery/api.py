"""The gallery's only way to the data: the registry's REST API, as the viewer.

Who the viewer is travels with every call: the registry's session cookie the browser
sent to the gallery (both live on the same host), an access token the viewer pasted,
or a share link. The gallery never opens the database, so it can run as its own
process, or several.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

TIMEOUT_SECONDS = 10.0
SESSION_COOKIE = "modelhall_session"


class GalleryError(Exception):
    """Something the viewer should read, not a traceback."""


class RegistryUnreachable(GalleryError):
    pass


class NotFound(GalleryError):
    pass


@dataclass(frozen=True)
class Viewer:
    """The credentials a page is rendered with."""

    session_cookie: str | None = None
    token: str | None = None
    share: str | None = None

    def headers(self, origin: str) -> dict[str, str]:
        headers = {"Origin": origin}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        elif self.session_cookie:
            headers["Cookie"] = f"{SESSION_COOKIE}={self.session_cookie}"
        if self.share:
            headers["X-Modelhall-Share"] = self.share
        return headers


@dataclass
class Page:
    items: list[dict[str, Any]]
    total: int


@dataclass
class GalleryAPI:
    """``registry`` is the URL the gallery reaches the registry at; ``public`` the one browsers use.

    One is made for each page a viewer loads. Their connections to the registry come from
    ``transport``, which may be shared by every viewer's pages (it keeps no cookies: each
    page's client has its own, so no viewer's session reaches another's calls).
    """

    registry: str
    viewer: Viewer
    gallery_origin: str
    public: str = ""
    transport: httpx.BaseTransport | None = None
    _client: httpx.Client | None = field(default=None, repr=False)

    @property
    def browser_url(self) -> str:
        return (self.public or self.registry).rstrip("/")

    @property
    def http(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(base_url=self.registry, headers=self.viewer.headers(self.gallery_origin),
                                        timeout=TIMEOUT_SECONDS, transport=self.transport)
        return self._client

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as error:
            raise RegistryUnreachable(f"the registry at {self.registry} cannot be reached ({error})") from None
        if response.status_code == 404:
            raise NotFound(_detail(response) or "not found")
        if response.status_code >= 400:
            raise GalleryError(f"{_detail(response) or response.reason_phrase} (HTTP {response.status_code})")
        return response

    def whoami(self) -> str | None:
        if not (self.viewer.token or self.viewer.session_cookie):  # no credentials: nobody to ask about
            return None
        return self._call("GET", "/api/v1/whoami").json()["name"]

    def providers(self) -> list[dict[str, str]]:
        return self._call("GET", "/auth/providers").json()

    def models(self, **params: Any) -> Page:
        response = self._call("GET", "/api/v1/repos", params={k: v for k, v in params.items() if v not in (None, "")})
        return Page(response.json(), int(response.headers.get("x-total-count", "0")))

    def facets(self) -> dict[str, list[str]]:
        return self._call("GET", "/api/v1/repos/facets").json()

    def model(self, name: str) -> dict[str, Any]:
        return self._call("GET", f"/api/v1/repos/{name}").json()

    def versions(self, name: str) -> list[dict[str, Any]]:
        return self._call("GET", f"/api/v1/repos/{name}/versions").json()

    def version(self, name: str, tag: str) -> dict[str, Any]:
        return self._call("GET", f"/api/v1/repos/{name}/versions/{tag}").json()

    def runs(self, name: str, limit: int = 500) -> list[dict[str, Any]]:
        return self._call("GET", f"/api/v1/repos/{name}/runs", params={"limit": limit}).json()

    def deployment(self, name: str) -> dict[str, Any]:
        return self._call("GET", f"/api/v1/repos/{name}/deployment").json()

    def shares(self, name: str) -> list[dict[str, Any]]:
        return self._call("GET", f"/api/v1/repos/{name}/shares").json()

    def create_share(self, name: str, **options: Any) -> dict[str, Any]:
        return self._call("POST", f"/api/v1/repos/{name}/shares", json=options).json()

    def revoke_share(self, name: str, link_id: int) -> None:
        self._call("DELETE", f"/api/v1/repos/{name}/shares/{link_id}")

    def update(self, name: str, **changes: Any) -> dict[str, Any]:
        return self._call("PATCH", f"/api/v1/repos/{name}", json=changes).json()

    def delete_version(self, name: str, digest: str) -> None:
        self._call("DELETE", f"/v2/{name}/manifests/{digest}")

    def demo_ticket(self, name: str) -> dict[str, str]:
        """Where the viewer's browser opens the model's demo (``url``, on the demo origin: a ticket
        that opens it once, within a minute) and its address for API clients (``api``)."""
        return self._call("POST", f"/api/v1/repos/{name}/demo-ticket").json()

    def shared_demo_ticket(self) -> dict[str, str]:
        """As :meth:`demo_ticket`, for the model the viewer's share link opens."""
        return self._call("POST", "/api/v1/shared/demo-ticket").json()

    def shared(self) -> dict[str, Any]:
        return self._call("GET", "/api/v1/shared").json()

    def shared_runs(self) -> list[dict[str, Any]]:
        return self._call("GET", "/api/v1/shared/runs").json()


def _detail(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    if isinstance(body, dict):
        detail = body.get("detail") or (body.get("errors") or [{}])[0].get("message")
        return str(detail) if detail else None
    return None
