"""Cross-site request forgery: a browser session may change things only from this site.

The session cookie is ``SameSite=Lax`` already; this checks, for every state-changing
request (not GET, HEAD or OPTIONS) that carries the session cookie and no
``Authorization`` header, that the browser's ``Origin`` (or, failing that, ``Referer``)
is this registry's own. That is OWASP's "verify origin with standard headers": it needs
no token in every form, so the demo pages Gradio renders are covered as they are.
API clients that send a token are not affected.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


class SameOriginForSessions:
    def __init__(self, app: ASGIApp, session_cookie: str, own_origins: set[str]):
        self.app = app
        self.session_cookie = session_cookie
        self.own_origins = {origin.lower().rstrip("/") for origin in own_origins}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in SAFE_METHODS and self._forged(scope):
            response = JSONResponse({"detail": "cross-site request refused: it did not come from this site"},
                                    status_code=403)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _forged(self, scope: Scope) -> bool:
        headers = Headers(scope=scope)
        if "authorization" in headers or f"{self.session_cookie}=" not in headers.get("cookie", ""):
            return False
        source = headers.get("origin") or headers.get("referer")
        if not source or source == "null":
            return True
        host = headers.get("host", "")
        scheme = scope.get("scheme", "http")
        return _origin(source) not in self.own_origins | {f"{scheme}://{host}".lower()}
