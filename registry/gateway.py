"""The gateway: ``/demo/{owner}/{name}[@tag-or-digest]/…`` and the predict API, through the registry.

Every call asks the policy who may run the model (404 for whoever may not see it), wakes
the deployment if it sleeps, and streams the request to a worker and the answer back. A
worker's demo lives under one prefix pinned to its version, ``/live/{repository id}@{digest}/``:
a page opened as ``/demo/alice/x/`` loads everything else from there, so the URLs Gradio
hands out (output files too) always reach the worker that made them, name the exact
version, and never the owner (a reviewer with an anonymous share link sees that prefix only).
The demo routes (:data:`demo_router`) are served on the demos' own origin, never the registry's
(see ``demo_origin.py``); predict and the deployment status stay on the registry's (:data:`router`).
Clients' own forwarding headers are dropped; a share link's holder is a stranger to the model, so
their requests carry only the headers a worker needs (:data:`LINK_HEADERS`), nothing that tells who
or where they are. Whoever may not see the repository without a link (or holds an anonymous one)
gets messages that name nothing.
Request bodies are capped (:func:`body_limit`: the spec's own file limits and the platform's
``max_request_bytes``) with a ``413`` that names the limit; demo traffic is streamed through.
While a model wakes, a browser gets a page that says so and reloads itself; an API
client waits (up to the wake timeout) unless it sends ``Prefer: respond-async``, which
gets a 503 with ``Retry-After`` at once.
"""

from __future__ import annotations

import json
import posixpath
import re
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any
from urllib.parse import unquote

import aiohttp
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.background import BackgroundTask

from modelhall.bounded import TooDeep, load_json
from modelhall.registry.api.repos import LATEST_TAG, versions_of, visible_repository
from modelhall.registry.auth.policy import Action, permitted_actions
from modelhall.registry.auth.principal import Principal
from modelhall.registry.auth.sharing import ShareLinkError, count_run
from modelhall.registry.context import get_db, get_principal
from modelhall.registry.db.models import Deployment, Manifest, Repository, Worker
from modelhall.registry.metadata import find_version
from modelhall.adapters.runtimes.base import WorkerHandle
from modelhall.registry.deployments import (
    Awake,
    DeploymentFailed,
    Deployments,
    Overloaded,
    StillStarting,
    Unschedulable,
    Version,
    worker_client,
)
from modelhall.registry.runs import RunTicket, new_run_id

router = APIRouter()  # on the registry's origin: predict and deployment status
demo_router = APIRouter()  # on the demo origin only (registry/demo_origin.py): the demos themselves
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
              "transfer-encoding", "upgrade", "host", "content-length", "authorization", "cookie"}
FORWARDED = {"x-forwarded-host", "x-forwarded-proto", "x-forwarded-prefix", "x-forwarded-for", "x-gradio-server",
             "x-modelhall-run", "x-modelhall-caller", "x-modelhall-cold"}
RETRY_AFTER = "2"
# What a share link's holder sends on to the model: the request's form, never who or where they are
# (no User-Agent, Referer, Accept-Language, cookies, client hints, forwarding headers, Origin).
LINK_HEADERS = {"accept", "accept-encoding", "content-type", "content-encoding", "range", "if-range", "if-match",
                "if-none-match", "if-modified-since", "if-unmodified-since", "cache-control", "last-event-id"}
NO_SUCH_DEMO = "no such demo"


def worker_gone() -> JSONResponse:
    return JSONResponse({"status": "crashed", "detail": "the model's worker stopped answering; it is restarted "
                         "automatically, try again shortly"}, status_code=502, headers={"Retry-After": RETRY_AFTER})


STARTING_PAGE = """<!doctype html><html><head><meta charset="utf-8"><meta http-equiv="refresh" content="2">
<title>Starting {name}…</title><style>body{{font-family:sans-serif;margin:4rem;color:#333}}</style></head>
<body><h1>Starting {name}…</h1><p>The model was asleep and is waking up. This page reloads by itself.</p></body></html>"""


def get_deployments(request: Request) -> Deployments:
    return request.app.state.deployments


def through_link(db: Session, principal: Principal, repository: Repository) -> bool:
    """Whether ``principal`` reaches ``repository`` as a share link's holder: with a link for it, and no
    member of it (its runs are then the link's, counted against it, and the model learns nothing of them)."""
    share = principal.share
    if share is None or share.repository_id != repository.id:
        return False
    without_link = replace(principal, share=None)
    return Action.READ_RUNS not in permitted_actions(db, without_link, repository.name, repository)


def may_name(db: Session, principal: Principal, repository: Repository) -> bool:
    """Whether a message to ``principal`` may name ``repository``: not for an anonymous link's holder,
    nor for anyone who sees it only through a link (they may not know its name)."""
    share = principal.share
    if share is None or share.repository_id != repository.id:
        return True
    if share.anonymous:
        return False
    without_link = replace(principal, share=None)
    return Action.VIEW in permitted_actions(db, without_link, repository.name, repository)


def newest_version(db: Session, repository: Repository) -> Manifest | None:
    """The ``latest`` tag's bundle, or else the newest tagged one."""
    manifest = find_version(db, repository, LATEST_TAG)
    if manifest is None:  # every request pays this listing only then, not for each demo asset
        versions = versions_of(db, repository)
        manifest = versions[0][1] if versions else None
    return manifest


def resolve_version(db: Session, principal: Principal, name: str, reference: str | None,
                    action: Action = Action.RUN) -> Version:
    """The bundle a reference names: a tag, a digest, or (none) ``latest`` or else the newest tag;
    a share link pinned to a version names that one. ``principal`` must be allowed ``action`` on it."""
    repository = visible_repository(db, principal, name)
    share = principal.share
    if reference is None and share is not None and share.repository_id == repository.id and share.digest:
        reference = share.digest
    manifest = find_version(db, repository, reference) if reference else newest_version(db, repository)
    named = may_name(db, principal, repository)
    missing = f"{name} has no version {reference or ''}".strip() if named else "no such version"
    if manifest is None:
        raise LookupError(missing)
    if manifest.spec is None:
        raise LookupError(f"{name}@{manifest.digest} is not a Modelhall bundle, so it cannot run" if named
                          else "this version is not a Modelhall bundle, so it cannot run")
    permitted = permitted_actions(db, principal, name, repository, digest=manifest.digest)
    if action not in permitted and Action.VIEW in permitted:
        raise HTTPException(403, f"you may not {action.value} {name}" if named else f"you may not {action.value} this")
    if action not in permitted:  # a link pinned to another version
        raise LookupError(missing)
    return Version(repository=repository, digest=manifest.digest, spec=manifest.spec)


def version_by_key(db: Session, principal: Principal, key: str) -> Version:
    """The version a demo prefix ``{repository id}@{digest}`` names, if ``principal`` may run it."""
    repository_id, _, digest = key.partition("@")
    repository = db.get(Repository, int(repository_id)) if repository_id.isdigit() else None
    if repository is None or not digest:
        raise LookupError(NO_SUCH_DEMO)
    try:
        return resolve_version(db, principal, repository.name, digest)
    except HTTPException as error:
        if error.status_code == 404:
            raise LookupError(NO_SUCH_DEMO) from None
        raise
    except LookupError:
        if may_name(db, principal, repository):
            raise
        raise LookupError(NO_SUCH_DEMO) from None


def recorded_caller(db: Session, principal: Principal, version: Version) -> tuple[str | None, int | None]:
    """Who a run is recorded as, and the share link to count it against: a run made through a link is
    the link's, never the person's (a reviewer stays anonymous to the author), on a public repository
    too; only the repository's members run as themselves whatever link they carry."""
    if principal.share is None or not through_link(db, principal, version.repository):
        return principal.name, None
    return principal.share.caller, principal.share.link_id


def run_headers(request_or_app: Request | FastAPI, version: Version, source: str, caller: str | None, awake: Awake,
                run_id: str | None = None, requested_at: float | None = None) -> dict[str, str]:
    """The signed ticket the worker journals a run with: which run, who asked (never more than a
    name), for which version, when the request came (the run's time, before any wake) and whether
    it is the first since a wake (a cold run). The worker cannot change any of it."""
    app = request_or_app.app if isinstance(request_or_app, Request) else request_or_app
    cold = awake.pool.first_prediction_since_wake() or awake.cold
    ticket = RunTicket(run=run_id or new_run_id(), repository_id=version.repository.id, digest=version.digest,
                       source=source, caller=caller, cold=cold, at=requested_at or time.time())
    return {"x-modelhall-context": app.state.deployments.journals.tickets.issue(ticket)}


def _forward_headers(request: Request, extra: dict[str, str], stranger: bool) -> dict[str, str]:
    """The headers a worker gets: for a share link's holder (``stranger``) only :data:`LINK_HEADERS`."""
    if stranger:
        headers = {k: v for k, v in request.headers.items() if k.lower() in LINK_HEADERS}
    else:
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() not in HOP_BY_HOP | FORWARDED and not k.lower().startswith("x-modelhall-")}
        headers["x-forwarded-for"] = request.client.host if request.client else ""
    headers["x-forwarded-host"] = request.headers.get("host", request.url.netloc)
    headers["x-forwarded-proto"] = request.url.scheme
    return {**headers, **extra}


class WorkerClients:
    """One keep-alive HTTP client per worker, closed with the app."""

    def __init__(self) -> None:
        self._clients: dict[str, aiohttp.ClientSession] = {}

    def get(self, worker: WorkerHandle) -> aiohttp.ClientSession:
        client = self._clients.get(worker.endpoint)
        if client is None:
            client = self._clients[worker.endpoint] = worker_client(worker)
        return client

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()


def _answer_headers(response: aiohttp.ClientResponse, dropped: frozenset[str] = frozenset()) -> dict[str, str]:
    """A worker's headers to pass on: never a ``Set-Cookie``, on either origin (browsers send a host's
    cookies to every port of it, so a model could set the registry's session; and cookies are never
    forwarded to workers, so one would be of no use to the model)."""
    return {k: v for k, v in response.headers.items() if k.lower() not in HOP_BY_HOP | dropped | {"set-cookie"}}


async def proxy(request: Request, worker: WorkerHandle, path: str, extra: dict[str, str], stranger: bool,
                limit: int) -> Response:
    """Stream ``request`` to ``worker`` (its body cut off past ``limit`` bytes) and the answer back
    (server-sent events included)."""
    client = request.app.state.worker_clients.get(worker)
    body = _body_of(request, limit)
    try:
        response = await client.request(request.method, f"/{path}", params=list(request.query_params.multi_items()),
                                        headers=_forward_headers(request, extra, stranger), data=body,
                                        allow_redirects=False, auto_decompress=False)
    except BodyTooLarge as error:
        return too_large(error.limit)
    except aiohttp.ClientError as error:
        if isinstance(error.__cause__ or error.__context__, BodyTooLarge):
            return too_large(limit)
        return worker_gone()
    return StreamingResponse(response.content.iter_any(), status_code=response.status,
                             headers=_answer_headers(response),  # raw bytes: they keep their encoding
                             background=BackgroundTask(response.release))


class BodyTooLarge(ValueError):
    """A request body past the limit of where it goes (:func:`body_limit`)."""

    def __init__(self, limit: int):
        super().__init__(f"request bodies here may have at most {limit} bytes")
        self.limit = limit


def too_large(limit: int) -> JSONResponse:
    return JSONResponse({"status": "too_large", "limit": limit,
                         "detail": f"the request body is larger than the {limit} bytes this model takes"},
                        status_code=413)


# What a spec's bounded inputs may take in a JSON body besides their values (names, quotes, commas).
BODY_MARGIN = 64 * 1024
FILE_TYPES = ("image", "audio", "video", "file")


def body_limit(spec: dict[str, Any], platform_max: int) -> int:
    """The largest request body a prediction of this model may send: the platform's maximum, or less
    where every input of the spec is bounded (files by ``max_size``, as base64; text by ``max_length``,
    at the six bytes a JSON escape may take per character)."""
    total = BODY_MARGIN
    for field in spec.get("inputs", []):
        kind = field.get("type")
        if kind in FILE_TYPES and field.get("max_size"):
            total += -(-int(field["max_size"]) // 3) * 4 + 1024
        elif kind == "text" and field.get("max_length"):
            total += int(field["max_length"]) * 6
        elif kind == "choice":
            total += sum(len(choice) * 6 + 4 for choice in field.get("choices", []))
        elif kind in FILE_TYPES or kind in ("text", "json"):
            return platform_max  # unbounded by the spec
    return min(total, platform_max)


def _declared_length(request: Request) -> int | None:
    value = request.headers.get("content-length", "")
    return int(value) if value.isdigit() else None


async def _capped(chunks: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        yield chunk


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused (:class:`BodyTooLarge`) as soon as it passes ``limit`` bytes, or at once
    when its ``Content-Length`` says it will."""
    declared = _declared_length(request)
    if declared is not None and declared > limit:
        raise BodyTooLarge(limit)
    return b"".join([chunk async for chunk in _capped(request.stream(), limit)])


async def prediction_body(request: Request, limit: int) -> bytes:
    """An API prediction's body: within ``limit`` (:class:`BodyTooLarge`) and, if it is JSON, nested no
    deeper than the platform keeps (:class:`TooDeep`). One that is not JSON goes on: the worker says
    what it takes."""
    body = await read_body(request, limit)
    if "json" in request.headers.get("content-type", ""):
        try:
            load_json(body)
        except TooDeep:
            raise
        except ValueError:
            pass
    return body


def _body_of(request: Request, limit: int) -> AsyncIterator[bytes] | None:
    """The request's body as it arrives, cut off past ``limit`` bytes, or none for requests that have
    none (so none is sent)."""
    has_body = "content-length" in request.headers or "transfer-encoding" in request.headers
    return _capped(request.stream(), limit) if has_body else None


async def forward(request: Request, worker: WorkerHandle, path: str, extra: dict[str, str], timeout: float,
                  content: bytes, stranger: bool, after: BackgroundTask | None = None) -> Response:
    """One prediction to ``worker``, answered whole (so its slot is held until it is done), within
    ``timeout`` seconds and :data:`MAX_ANSWER_BYTES`."""
    client = request.app.state.worker_clients.get(worker)
    try:
        async with client.request(request.method, f"/{path}", params=list(request.query_params.multi_items()),
                                  headers=_forward_headers(request, extra, stranger), data=content,
                                  allow_redirects=False, timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            body = await read_bounded(response)
    except aiohttp.ClientError:
        return worker_gone()
    except TimeoutError:
        return JSONResponse({"status": "timeout", "detail": f"the model took longer than {timeout:g} s"},
                            status_code=504)
    except AnswerTooLarge as error:
        return JSONResponse({"status": "failed", "detail": str(error)}, status_code=502)
    return Response(body, status_code=response.status,
                    headers=_answer_headers(response, frozenset({"content-encoding"})), background=after)


MAX_ANSWER_BYTES = 256 * 1024 * 1024


class AnswerTooLarge(ValueError):
    """A worker's answer to one prediction passed :data:`MAX_ANSWER_BYTES`."""


async def read_bounded(response: aiohttp.ClientResponse) -> bytes:
    """A worker's whole answer, refused past :data:`MAX_ANSWER_BYTES` instead of filling the registry's memory."""
    chunks, size = [], 0
    async for chunk in response.content.iter_any():
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise AnswerTooLarge(f"the model's answer passed {MAX_ANSWER_BYTES // 2**20} MiB")
        chunks.append(chunk)
    return b"".join(chunks)


def _wants_html(request: Request) -> bool:
    return request.method == "GET" and "text/html" in request.headers.get("accept", "")


async def _after_prediction(deployments: Deployments, deployment_id: int) -> None:
    """After the answer went out: restart the idle clock. (The run reaches the history from the
    worker's journal, collected by the reaper or by whoever reads the history first.)"""
    deployments.touch(deployment_id)


def split_reference(name_and_reference: str) -> tuple[str, str | None]:
    name, _, reference = name_and_reference.partition("@")
    return name, reference or None


SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
# The demo's requests that change something but run nothing: a file on its way to a prediction, a
# queue's housekeeping. Every other request that is not a read may run the model.
NOT_PREDICTIONS = re.compile(r"^(gradio_api/)?(upload|reset|cancel|heartbeat/[^/]*)$")


def _normal_path(path: str) -> str:
    """A path as a worker's router would match it: decoded, ``.``, ``..`` and repeated slashes resolved."""
    return posixpath.normpath("/" + unquote(path).replace("\\", "/")).lstrip("/")


def _is_prediction(request: Request, path: str, run_id: str | None) -> bool:
    """An API prediction, or any demo request that may run the model (a ``POST`` to Gradio's queue,
    call, run and API routes, to the worker's own ``/predict``, to anything but :data:`NOT_PREDICTIONS`):
    what a share link's quota counts, and the only requests that carry a run ticket."""
    if run_id is not None:
        return True
    return request.method not in SAFE_METHODS and NOT_PREDICTIONS.match(_normal_path(path)) is None


def _is_internal(path: str) -> bool:
    """A path of the worker's own API for the registry (its journal), which no caller reaches."""
    return _normal_path(path).split("/", 1)[0].lower() == "_internal"


async def serve_version(request: Request, version: Version, path: str, db: Session, principal: Principal,
                        run_id: str | None = None) -> Response:
    """Every request to a version's worker passes here, whatever the route: the one place that caps
    its body, counts a share link's predictions and decides what the worker learns of the caller."""
    if _is_internal(path):
        return JSONResponse({"detail": "not found"}, status_code=404)
    requested_at = time.time()
    platform_max = request.app.state.context.settings.max_request_bytes
    limit = body_limit(version.spec, platform_max) if run_id else platform_max
    try:
        body = await prediction_body(request, limit) if run_id else b""
        if (_declared_length(request) or 0) > limit:  # demo traffic: streamed, and cut off past the limit
            raise BodyTooLarge(limit)
    except BodyTooLarge:
        return too_large(limit)
    except TooDeep as error:
        return JSONResponse({"status": "invalid", "detail": f"the request body is refused: {error}"}, status_code=400)
    caller, link_id = recorded_caller(db, principal, version)
    if link_id is not None and _is_prediction(request, path, run_id):
        try:
            count_run(db, link_id)
        except ShareLinkError as error:
            return JSONResponse({"status": "quota", "detail": str(error)}, status_code=error.status)
    stranger = link_id is not None
    named = may_name(db, principal, version.repository)
    name = version.repository.name if named else version.spec["name"]
    db.close()  # its connection goes back to the pool: a wake-up, or a stream, may last minutes
    wait = not _wants_html(request) and "respond-async" not in request.headers.get("prefer", "")
    try:
        awake = await get_deployments(request).wake(version, wait=wait)
    except StillStarting as starting:
        if _wants_html(request):
            return HTMLResponse(STARTING_PAGE.format(name=name), status_code=503,
                                headers={"Retry-After": RETRY_AFTER})
        return JSONResponse({"status": "starting", "detail": str(starting) if named else "the model is starting"},
                            status_code=503, headers={"Retry-After": RETRY_AFTER})
    except Unschedulable as error:
        return JSONResponse({"status": "unschedulable", "detail": str(error) if named else
                             "the model cannot be placed on any machine now"}, status_code=503)
    except DeploymentFailed as error:
        return JSONResponse({"status": "failed", "detail": str(error) if named else
                             "the model could not start; its author can see why"}, status_code=502)
    after = None
    if run_id:  # an API prediction: restart the idle clock, and put it in the run history once answered
        after = BackgroundTask(_after_prediction, get_deployments(request), awake.deployment_id)
    # Only a prediction carries a ticket: a worker handed one for every page view could journal made-up runs.
    headers = (run_headers(request, version, "api" if run_id else "demo", caller, awake, run_id, requested_at)
               if _is_prediction(request, path, run_id) else {})
    if run_id is None:  # demo traffic: Gradio queues the demo's predictions itself, in one process
        primary = awake.pool.primary
        return await proxy(request, primary, path, headers, stranger, limit) if primary else worker_gone()
    try:
        async with get_deployments(request).slot(version, awake) as worker:
            return await forward(request, worker, path, headers, version.call_timeout, body, stranger, after)
    except Overloaded as error:
        return JSONResponse({"status": "busy", "detail": str(error)}, status_code=429,
                            headers={"Retry-After": RETRY_AFTER})


async def _serve(request: Request, owner: str, name_ref: str, path: str, db: Session, principal: Principal,
                 run_id: str | None = None) -> Response:
    name, reference = split_reference(name_ref)
    try:
        version = resolve_version(db, principal, f"{owner}/{name}", reference)
    except LookupError as error:
        return JSONResponse({"detail": str(error)}, status_code=404)
    return await serve_version(request, version, path, db, principal, run_id)


@demo_router.api_route("/demo/{owner}/{name_ref}", methods=["GET"], include_in_schema=False)
def demo_without_slash(owner: str, name_ref: str) -> RedirectResponse:
    return RedirectResponse(f"/demo/{owner}/{name_ref}/")


DEMO_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"]


@demo_router.api_route("/demo/{owner}/{name_ref}/{path:path}", methods=DEMO_METHODS, include_in_schema=False)
async def demo(owner: str, name_ref: str, path: str, request: Request, db: Session = Depends(get_db),
               principal: Principal = Depends(get_principal)) -> Response:
    """The model's Gradio demo and its API, woken on demand."""
    return await _serve(request, owner, name_ref, path, db, principal)


@demo_router.api_route("/live/{key}/{path:path}", methods=DEMO_METHODS, include_in_schema=False)
async def live(key: str, path: str, request: Request, db: Session = Depends(get_db),
               principal: Principal = Depends(get_principal)) -> Response:
    """A version's demo under its own prefix (see the module's docstring)."""
    try:
        version = version_by_key(db, principal, key)
    except LookupError as error:
        return JSONResponse({"detail": str(error)}, status_code=404)
    return await serve_version(request, version, path, db, principal)


@router.post("/api/v1/repos/{owner}/{name_ref}/predict", tags=["repositories"])
async def predict(owner: str, name_ref: str, request: Request, db: Session = Depends(get_db),
                  principal: Principal = Depends(get_principal)) -> Response:
    """Run one prediction (``{"inputs": {...}}``) on the latest version, or ``name@tag``/``name@sha256:…``."""
    return await _serve(request, owner, name_ref, "predict", db, principal, run_id=new_run_id())



@router.get("/api/v1/repos/{owner}/{name_ref}/deployment", tags=["repositories"])
def deployment_status(owner: str, name_ref: str, request: Request, db: Session = Depends(get_db),
                      principal: Principal = Depends(get_principal)) -> JSONResponse:
    """Whether a version is built, sleeping or running, and its workers."""
    name, reference = split_reference(name_ref)
    try:
        version = resolve_version(db, principal, f"{owner}/{name}", reference, Action.VIEW)
    except LookupError as error:
        return JSONResponse({"detail": str(error)}, status_code=404)
    deployment = db.scalar(select(Deployment).where(Deployment.repository_id == version.repository.id,
                                                    Deployment.digest == version.digest))
    if deployment is None:
        return JSONResponse({"digest": version.digest, "state": "sleeping", "build_status": "pending", "workers": []})
    workers = db.scalars(select(Worker).where(Worker.deployment_id == deployment.id).order_by(Worker.id)).all()
    last_request = get_deployments(request).last_request(deployment)
    return JSONResponse({
        "digest": version.digest, "state": deployment.state, "detail": deployment.state_detail,
        "build_status": deployment.build_status, "build_error": deployment.build_error,
        "environment": deployment.environment,
        "last_request_at": last_request.isoformat() if last_request else None,
        "workers": [{"id": w.handle, "state": w.state, "started_at": w.started_at.isoformat(),
                     **({"journal_error": w.journal_error} if w.journal_error else {})} for w in workers],
    })


async def execute_async_run(app: FastAPI, run_id: str, repository: Repository, digest: str, spec: dict[str, Any],
                            inputs: dict[str, Any], caller: str | None
                            ) -> tuple[str, dict[str, Any] | None, str | None, float | None]:
    """Carry out a queued run on its version's worker: (status, outputs, error, duration in ms)."""
    version = Version(repository=repository, digest=digest, spec=spec)
    deployments: Deployments = app.state.deployments
    try:
        awake = await deployments.wake(version)
    except (DeploymentFailed, StillStarting) as error:
        return "failed", None, str(error), None
    try:
        async with deployments.slot(version, awake) as worker:
            async with app.state.worker_clients.get(worker).post(
                    "/predict", json={"inputs": inputs}, headers=run_headers(app, version, "async", caller, awake, run_id),
                    timeout=aiohttp.ClientTimeout(total=version.call_timeout)) as response:
                status, text = response.status, (await read_bounded(response)).decode(errors="replace")
    except (Overloaded, AnswerTooLarge) as error:
        return "failed", None, str(error), None
    except TimeoutError:
        return "failed", None, f"the model took longer than {version.call_timeout:g} s", None
    except aiohttp.ClientError as error:
        return "failed", None, f"the model's worker stopped answering: {error}", None
    try:
        body = json.loads(text)
    except ValueError:
        body = {}
    if status != 200:
        return "failed", None, body.get("error", {}).get("message", text[:500]), None
    return "succeeded", body["outputs"], None, body.get("duration_ms")
