"""What every answer of the registry's own origin carries: ``X-Content-Type-Options: nosniff`` and a
Content-Security-Policy.

The registry serves JSON, blobs and redirects, and three pages of its own. Nothing of it needs to load
anything when a browser shows it, so the default policy allows nothing (``default-src 'none'``,
stricter than ``'self'``: even an answer that carried HTML, a worker's to a predict call say, could
not run a script or load one from the registry's own URLs). Framing is for the gallery only. The
pages that need more say so here, by path: the API docs (Swagger UI and ReDoc, served from
the registry's own ``/docs/assets``, with FastAPI's inline start-up script) and the logout and login-link pages (an inline style, a form to this site). A route that sets its own policy keeps it.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DOCS_SOURCES = {  # FastAPI's get_swagger_ui_html and get_redoc_html over fastapi-offline's assets
    "script-src": "'self' 'unsafe-inline'",
    "style-src": "'self' 'unsafe-inline'",
    "img-src": "'self' data:",
    "worker-src": "blob:",
    "connect-src": "'self'",
    "form-action": "'self'",
}
LOGOUT_SOURCES = {"style-src": "'unsafe-inline'", "form-action": "'self'"}
PAGES = {"/docs": DOCS_SOURCES, "/docs/oauth2-redirect": DOCS_SOURCES, "/redoc": DOCS_SOURCES,
         "/auth/logout": LOGOUT_SOURCES, "/auth/link": LOGOUT_SOURCES}  # the login link's page is the same kind


def content_security_policy(path: str, gallery_url: str | None) -> str:
    """The policy for an answer at ``path``: nothing allowed, unless :data:`PAGES` names the page."""
    directives = {"default-src": "'none'", "base-uri": "'none'", "form-action": "'none'",
                  "frame-ancestors": " ".join(["'self'", *([gallery_url.rstrip("/")] if gallery_url else [])]),
                  **PAGES.get(path, {})}
    return "; ".join(f"{name} {sources}" for name, sources in directives.items())


class SecurityHeaders:
    def __init__(self, app: ASGIApp, gallery_url: str | None):
        self.app = app
        self.gallery_url = gallery_url

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = content_security_policy(scope["path"], self.gallery_url)

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["x-content-type-options"] = "nosniff"
                headers.setdefault("content-security-policy", policy)
            await send(message)

        await self.app(scope, receive, with_headers)
