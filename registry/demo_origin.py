"""Demos on an origin of their own (``MODELHALL_DEMO_URL``), so that nothing a model serves acts with
a viewer's registry session.

Everything a worker answers (its pages, scripts, files, cookies) is the model author's. Served on the
registry's origin, a page of it could call the registry's API with the viewer's session cookie. So
the demo routes (``/live/{repository id}@{digest}/…`` and ``/demo/{owner}/{name}/…``) are served only on
the demo origin, by :func:`create_demo_app`, and the registry answers its own ``/demo/…`` and
``/live/…`` with a redirect there. The two share one process and one app state
(:class:`OriginDispatcher`): ``modelhall up`` listens on a second port for the demo origin.

Who the viewer is crosses over in a ticket (see ``auth/demo_tickets.py``): the registry decides who
may run the demo, and its redirect carries a ticket that the demo origin exchanges for a cookie of its
own, scoped to that demo's path. The demo origin never accepts the registry's session: it drops every
cookie but its own from the requests it gets (and the gateway every ``Set-Cookie`` a model sends).
API clients (``gradio_client`` with ``Authorization``, or ``X-Modelhall-Share``) call the demo origin
directly.

Cookies are kept per host name, not per port: two ports of one host share a cookie jar, so a script
on the demo origin could write cookies the registry then receives. That is why the embedded default
gives the demo origin the other name of the loopback address (``localhost`` beside ``127.0.0.1``) and
why a cluster should serve demos from a host name of their own.
"""

from __future__ import annotations

from dataclasses import replace
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelhall.registry import gateway
from modelhall.registry.auth.csrf import SameOriginForSessions
from modelhall.registry.auth.demo_tickets import (
    DemoPass,
    SpentTickets,
    TicketRefused,
    issue_pass,
    issue_ticket,
    read_pass,
    redeem_ticket,
)
from modelhall.registry.auth.principal import (
    ANONYMOUS,
    AuthenticationError,
    Principal,
    principal_from_header,
)
from modelhall.registry.auth.sharing import ShareLinkError, current_grant, find_share_link, grant_of
from modelhall.registry.context import SHARE_HEADER, find_principal_with, get_context, get_db, get_principal
from modelhall.registry.db.models import Repository, User
from modelhall.registry.deployments import Version
from modelhall.settings import Settings

DEMO_COOKIE = "modelhall_demo"
DEMO_SCOPES = frozenset({"read"})  # a demo pass lets its holder run one demo: nothing else needs more
LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1"}
# What a model's pages may not do on the demo origin: be framed anywhere but the gallery (so one
# demo cannot frame another and read it), or keep a handle on a window they open onto another demo.
OPENER_POLICY = "noopener-allow-popups"
PATH_SAFE = "/=@:~!$&()*+,;"  # what stays as it is when a path is put back into a URL


def demo_key(version: Version) -> str:
    return f"{version.repository.id}@{version.digest}"


def demo_pass_for(principal: Principal, version: Version) -> DemoPass | None:
    """Who the viewer is to this demo, or None for nobody (a public demo needs no ticket)."""
    share = principal.share if principal.share and principal.share.repository_id == version.repository.id else None
    if principal.user is None and share is None:
        return None
    return DemoPass(key=demo_key(version), user_id=principal.user.id if principal.user else None,
                    link_id=share.link_id if share else None)


def entry_url(settings: Settings, version: Version, principal: Principal, path: str = "", query: str = "") -> str:
    """Where a browser opens this demo on the demo origin: with a ticket if it needs to say who it is."""
    demo_pass = demo_pass_for(principal, version)
    ticket = urlencode({"ticket": issue_ticket(settings.signing_key, demo_pass)}) if demo_pass else ""
    query = "&".join(part for part in (query, ticket) if part)
    url = f"{settings.demo_url}/live/{demo_key(version)}/{quote(path, safe=PATH_SAFE)}"
    return f"{url}?{query}" if query else url


def _same_path_there(request: Request) -> RedirectResponse:
    """The same request, to the demo origin (307: method and body kept); the caller says who it is there."""
    url = get_context(request).settings.demo_url + quote(request.url.path, safe=PATH_SAFE)
    return RedirectResponse(f"{url}?{request.url.query}" if request.url.query else url, status_code=307)


# --- on the registry's origin ----------------------------------------------------------------

registry_router = APIRouter()
BROWSING = ["GET", "HEAD"]
CHANGING = ["POST", "PUT", "PATCH", "DELETE"]


@registry_router.api_route("/demo/{owner}/{name_ref}", methods=BROWSING, include_in_schema=False)
def demo_without_slash(owner: str, name_ref: str) -> RedirectResponse:
    return RedirectResponse(f"/demo/{owner}/{name_ref}/")


@registry_router.api_route("/demo/{owner}/{name_ref}/{path:path}", methods=BROWSING, include_in_schema=False)
def open_demo(owner: str, name_ref: str, path: str, request: Request, db: Session = Depends(get_db),
              principal: Principal = Depends(get_principal)) -> Response:
    """A demo, opened here: decide who may run it, then on to the demo origin with a ticket."""
    name, reference = gateway.split_reference(name_ref)
    try:
        version = gateway.resolve_version(db, principal, f"{owner}/{name}", reference)
    except LookupError as error:
        return JSONResponse({"detail": str(error)}, status_code=404)
    return RedirectResponse(entry_url(get_context(request).settings, version, principal, path, request.url.query),
                            status_code=303)


@registry_router.api_route("/live/{key}/{path:path}", methods=BROWSING, include_in_schema=False)
def open_live(key: str, path: str, request: Request, db: Session = Depends(get_db),
              principal: Principal = Depends(get_principal)) -> Response:
    """A version's demo by its prefix (where share links lead), opened here: as :func:`open_demo`."""
    try:
        version = gateway.version_by_key(db, principal, key)
    except LookupError as error:
        return JSONResponse({"detail": str(error)}, status_code=404)
    return RedirectResponse(entry_url(get_context(request).settings, version, principal, path, request.url.query),
                            status_code=303)


@registry_router.api_route("/demo/{owner}/{name_ref}/{path:path}", methods=CHANGING, include_in_schema=False)
@registry_router.api_route("/live/{key}/{path:path}", methods=CHANGING, include_in_schema=False)
def demo_call_elsewhere(request: Request) -> RedirectResponse:
    return _same_path_there(request)


@registry_router.post("/api/v1/repos/{owner}/{name_ref}/demo-ticket", tags=["repositories"])
def demo_ticket(owner: str, name_ref: str, request: Request, db: Session = Depends(get_db),
                principal: Principal = Depends(get_principal)) -> dict[str, str]:
    """Where to open this model's demo as the caller (``url``: on the demo origin, with a ticket
    that lasts a minute and opens it once, e.g. in an iframe), and the demo's address for API
    clients that send their own credentials (``api``)."""
    name, reference = gateway.split_reference(name_ref)
    try:
        version = gateway.resolve_version(db, principal, f"{owner}/{name}", reference)
    except LookupError as error:
        raise HTTPException(404, str(error)) from None
    settings = get_context(request).settings
    return {"url": entry_url(settings, version, principal), "api": f"{settings.demo_url}/demo/{owner}/{name_ref}/"}


@registry_router.post("/api/v1/shared/demo-ticket", tags=["sharing"])
def shared_demo_ticket(request: Request, db: Session = Depends(get_db),
                       principal: Principal = Depends(get_principal)) -> dict[str, str]:
    """As ``…/demo-ticket``, for the model the caller's share link opens (its ``api`` names no owner)."""
    share = principal.share
    if share is None:
        raise HTTPException(404, "no share link: send it as X-Modelhall-Share, or open it in the browser first")
    repository = db.get(Repository, share.repository_id)
    try:
        version = gateway.resolve_version(db, principal, repository.name, None)
    except LookupError as error:
        raise HTTPException(404, str(error)) from None
    settings = get_context(request).settings
    return {"url": entry_url(settings, version, principal), "api": f"{settings.demo_url}/live/{demo_key(version)}/"}


# --- on the demo origin ----------------------------------------------------------------------


def _find_demo_principal(request: Request, db: Session) -> Principal:
    """Who asks on the demo origin: the ``Authorization`` header, else this demo's pass; plus a share
    link sent as ``X-Modelhall-Share``. Never the registry's session."""
    settings = get_context(request).settings
    header = request.headers.get("authorization")
    principal = principal_from_header(db, header, settings.signing_key) if header else _from_pass(request, db)
    share_token = request.headers.get(SHARE_HEADER)
    if not share_token:
        return principal
    try:
        link = find_share_link(db, share_token)
    except ShareLinkError as error:
        raise AuthenticationError(str(error)) from None
    return replace(principal, share=grant_of(link))


def _from_pass(request: Request, db: Session) -> Principal:
    value, key = request.cookies.get(DEMO_COOKIE), request.path_params.get("key")
    demo_pass = read_pass(get_context(request).settings.signing_key, value, key) if value and key else None
    if demo_pass is None:
        return ANONYMOUS
    user = db.get(User, demo_pass.user_id) if demo_pass.user_id is not None else None
    share = current_grant(db, demo_pass.link_id) if demo_pass.link_id is not None else None
    return Principal(user=user, scopes=DEMO_SCOPES, presented_credentials=True, share=share)


async def demo_principal(request: Request, db: Session = Depends(get_db)) -> Principal:
    return await find_principal_with(_find_demo_principal, request, db)


def demo_cookie(value: str, key_path: str, seconds: int, demo_url: str) -> str:
    """The pass cookie, for one demo's path only.

    ``SameSite=None; Secure; Partitioned`` wherever ``Secure`` is possible (https, and loopback,
    which browsers count as secure): the demo origin is often another site than the gallery that
    embeds it (``localhost`` and ``127.0.0.1`` are two sites), and browsers drop ``Lax`` cookies,
    and third-party ones that are not partitioned, set inside a cross-site iframe. A partitioned
    cookie is kept per top-level site, so a page elsewhere that embeds the demo does not get it.
    Plain http on another host cannot be ``Secure``: ``Lax`` then.
    """
    parts = urlsplit(demo_url)
    secure = parts.scheme == "https" or (parts.hostname or "") in LOOPBACK_HOSTS
    attributes = ["SameSite=None", "Secure", "Partitioned"] if secure else ["SameSite=Lax"]
    return "; ".join([f"{DEMO_COOKIE}={value}", f"Path={key_path}", f"Max-Age={seconds}", "HttpOnly", *attributes])


class DemoGate:
    """The demo origin's door: drops every cookie but its own pass from each request (the registry's
    session included, which browsers send to every port of a host), and exchanges a ``?ticket=``
    for a pass: 303 to the same URL without it, or 403 saying why the ticket is refused."""

    def __init__(self, app: ASGIApp, settings: Settings, spent: SpentTickets):
        self.app = app
        self.settings = settings
        self.spent = spent

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope = {**scope, "headers": _own_cookie_only(scope["headers"])}
        exchange = await self._exchange(scope) if scope["type"] == "http" else None
        if exchange is not None:
            await exchange(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _exchange(self, scope: Scope) -> Response | None:
        raw_path = scope.get("raw_path", scope["path"].encode()).decode("latin-1")
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        tickets = [value for name, value in query if name == "ticket"]
        raw_parts, parts = raw_path.split("/", 3), scope["path"].split("/", 3)
        if (scope["method"] not in BROWSING or not tickets or len(parts) < 4 or len(raw_parts) < 4
                or parts[1] != "live" or not parts[2]):
            return None
        key_path = f"/live/{raw_parts[2]}/"
        try:
            demo_pass = await run_in_threadpool(redeem_ticket, self.settings.signing_key, tickets[0], parts[2],
                                                self.spent)  # spending it is a database write
        except TicketRefused as refused:
            return JSONResponse({"detail": str(refused)}, status_code=403)
        clean_query = urlencode([(name, value) for name, value in query if name != "ticket"])
        seconds = self.settings.session_max_age
        cookie = demo_cookie(issue_pass(self.settings.signing_key, demo_pass, seconds), key_path, seconds,
                             self.settings.demo_url)
        return Response(status_code=303, headers={"Location": raw_path + (f"?{clean_query}" if clean_query else ""),
                                                  "Set-Cookie": cookie, "Cache-Control": "no-store"})


def _own_cookie_only(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``headers`` with a ``Cookie`` header of the demo's pass alone (the most specific one: browsers
    send the cookie of the longest matching path first), or none."""
    kept, own = [], None
    for name, value in headers:
        if name != b"cookie":
            kept.append((name, value))
            continue
        for part in value.split(b";"):
            cookie_name, _, cookie_value = part.strip().partition(b"=")
            if cookie_name == DEMO_COOKIE.encode() and own is None:
                own = cookie_value
    if own is not None:
        kept.append((b"cookie", DEMO_COOKIE.encode() + b"=" + own))
    return kept


class ModelAnswers:
    """What the demo origin adds to every answer: the framing and opener limits above (the gateway has
    already dropped any ``Set-Cookie`` a worker sent)."""

    def __init__(self, app: ASGIApp, frame_ancestors: str):
        self.app = app
        self.frame_ancestors = f"frame-ancestors {frame_ancestors}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def limited(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["cross-origin-opener-policy"] = OPENER_POLICY
                headers.append("content-security-policy", self.frame_ancestors)
            await send(message)

        await self.app(scope, receive, limited)


async def _authentication_failed(request: Request, error: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(error)}, status_code=401)


def create_demo_app(registry: FastAPI) -> FastAPI:
    """The demo origin's app: the gateway's demo routes and nothing else, sharing ``registry``'s state."""
    settings: Settings = registry.state.context.settings
    app = FastAPI(title="Modelhall demos", docs_url=None, redoc_url=None, openapi_url=None)
    app.state = registry.state
    app.dependency_overrides[get_principal] = demo_principal
    app.include_router(gateway.demo_router)
    app.add_exception_handler(AuthenticationError, _authentication_failed)
    app.add_middleware(ModelAnswers, frame_ancestors=settings.gallery_url or "'none'")
    app.add_middleware(SameOriginForSessions, session_cookie=DEMO_COOKIE, own_origins={settings.demo_url})
    app.add_middleware(DemoGate, settings=settings, spent=registry.state.demo_tickets)
    return app


class OriginDispatcher:
    """One process, two origins: a request that came in on ``demo_port`` goes to the demo app, any
    other to the registry's; the registry's app runs the lifespan (workers, reaper) for both."""

    def __init__(self, registry: ASGIApp, demo: ASGIApp, demo_port: int):
        self.registry = registry
        self.demo = demo
        self.demo_port = demo_port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = scope.get("server") if scope["type"] != "lifespan" else None
        app = self.demo if server and server[1] == self.demo_port else self.registry
        await app(scope, receive, send)

