"""The gateway: ``/demo/{owner}/{name}[@tag-or-digest]/…`` and the predict API, through the registry.

Every call asks the policy who may run the model (404 for whoever may not see it), wakes
the deployment if it sleeps, and streams the request to a worker and the answer back. A
worker's demo lives under one prefix pinned to its version, ``/live/{repository id}@{digest}/``:
a page opened as ``/demo/alice/x/`` loads everything else from there, so the URLs Gradio
hands out (output files too) always reach the worker that made them, name the exact
version, and never the owner (a reviewer with an anonymous share link sees that prefix only).
The demo routes (:data:`demo_router`) are served on the demos' own origin, never the registry's
(see ``demo_origin.py``); predict and the deployment status stay on the registry's (:data:`router`).
Clients' own forwarding headers are dropped.
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

from modelhall.registry.api.repos import LATEST_TAG, versions_of, visible_repository
from modelhall.registry.auth.policy import Action, permitted_actions
from modelhall.registry.auth.principal import Principal
from modelhall.registry.auth.sharing import ShareLinkError, count_run
from modelhall.registry.context import get_db, get_principal
from modelhall.registry.db.models import Deployment, Repository, Worker
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


def worker_gone() -> JSONResponse:
    return JSONResponse({"status": "crashed", "detail": "the model's worker stopped answering; it is restarted "
                         "automatically, try again shortly"}, status_code=502, headers={"Retry-After": RETRY_AFTER})


STARTING_PAGE = """<!doctype html><html><head><meta charset="utf-8"><meta http-equiv="refresh" content="2">
<title>Starting {name}…</title><style>body{{font-family:sans-serif;margin:4rem;color:#333}}</style></head>
<body><h1>Starting {name}…</h1><p>The model was asleep and is waking up. This page reloads by itself.</p></body></html>"""


def get_deployments(request: Request) -> Deployments:
    return request.app.state.deployments


def resolve_version(db: Session, principal: Principal, name: str, reference: str | None,
                    action: Action = Action.RUN) -> Version:
    """The bundle a reference names: a tag, a digest, or (none) ``latest`` or else the newest tag;
    a share link pinned to a version names that one. ``principal`` must be allowed ``action`` on it."""
    repository = visible_repository(db, principal, name)
    share = principal.share
    if reference is None and share is not None and share.repository_id == repository.id and share.digest:
        reference = share.digest
    manifest = find_version(db, repository, reference or LATEST_TAG)
    if manifest is None and reference is None:  # no "latest" tag: the newest version (every request pays
        versions = versions_of(db, repository)  # this listing only then, not for each demo asset)
        manifest = versions[0][1] if versions else None
    if manifest is None:
        raise LookupError(f"{name} has no version {reference or ''}".strip())
    if manifest.spec is None:
        raise LookupError(f"{name}@{manifest.digest} is not a Modelhall bundle, so it cannot run")
    permitted = permitted_actions(db, principal, name, repository, digest=manifest.digest)
    if action not in permitted and Action.VIEW in permitted:
        raise HTTPException(403, f"you may not {action.value} {name}")
    if action not in permitted:  # a link pinned to another version
        raise LookupError(f"{name} has no version {reference or ''}".strip())
    return Version(repository=repository, digest=manifest.digest, spec=manifest.spec)


def version_by_key(db: Session, principal: Principal, key: str) -> Version:
    """The version a demo prefix ``{repository id}@{digest}`` names, if ``principal`` may run it."""
    repository_id, _, digest = key.partition("@")
    repository = db.get(Repository, int(repository_id)) if repository_id.isdigit() else None
    if repository is None or not digest:
        raise LookupError("no such demo")
    try:
        return resolve_version(db, principal, repository.name, digest)
    except HTTPException as error:
        if error.status_code == 404:
            raise LookupError("no such demo") from None
        raise


def recorded_caller(db: Session, principal: Principal, version: Version) -> tuple[str | None, int | None]:
    """Who a run is recorded as, and the share link to count it against: a run that only a share
    link allows is the link's, never the person's (a reviewer stays anonymous to the author)."""
    share = principal.share
    if share is None or share.repository_id != version.repository.id:
        return principal.name, None
    without_link = replace(principal, share=None)
    if Action.RUN in permitted_actions(db, without_link, version.repository.name, version.repository):
        return principal.name, None
    return share.caller, share.link_id


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


def _forward_headers(request: Request, extra: dict[str, str]) -> dict[str, str]:
    headers = {k: v for k, v in request.headers.items()
               if k.lower() not in HOP_BY_HOP | FORWARDED and not k.lower().startswith("x-modelhall-")}
    headers["x-forwarded-host"] = request.headers.get("host", request.url.netloc)
    headers["x-forwarded-proto"] = request.url.scheme
    headers["x-forwarded-for"] = request.client.host if request.client else ""
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


async def proxy(request: Request, worker: WorkerHandle, path: str, extra: dict[str, str]) -> Response:
    """Stream ``request`` to ``worker`` and the answer back (server-sent events included)."""
    client = request.app.state.worker_clients.get(worker)
    try:
        response = await client.request(request.method, f"/{path}", params=list(request.query_params.multi_items()),
                                        headers=_forward_headers(request, extra), data=_body_of(request),
                                        allow_redirects=False, auto_decompress=False)
    except aiohttp.ClientError:
        return worker_gone()
    return StreamingResponse(response.content.iter_any(), status_code=response.status,
                             headers=_answer_headers(response),  # raw bytes: they keep their encoding
                             background=BackgroundTask(response.release))


def _body_of(request: Request) -> AsyncIterator[bytes] | None:
    """The request's body as it arrives, or none for requests that have none (so none is sent)."""
    has_body = "content-length" in request.headers or "transfer-encoding" in request.headers
    return request.stream() if has_body else None


async def forward(request: Request, worker: WorkerHandle, path: str, extra: dict[str, str], timeout: float,
                  after: BackgroundTask | None = None) -> Response:
    """One prediction to ``worker``, answered whole (so its slot is held until it is done), within
    ``timeout`` seconds and :data:`MAX_ANSWER_BYTES`."""
    client = request.app.state.worker_clients.get(worker)
    try:
        async with client.request(request.method, f"/{path}", params=list(request.query_params.multi_items()),
                                  headers=_forward_headers(request, extra), data=await request.body(),
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


GRADIO_PREDICTIONS = re.compile(r"^(gradio_api/)?(queue/join|call/[^/]+|run/[^/]+|api/[^/]+)/?$")


def _is_prediction(request: Request, path: str, run_id: str | None) -> bool:
    """An API prediction, or one of the demo's (Gradio's queue, call and run routes): what a share
    link's quota counts, and the only requests that carry a run ticket."""
    return run_id is not None or (request.method == "POST" and GRADIO_PREDICTIONS.match(path) is not None)


def _is_internal(path: str) -> bool:
    """A path of the worker's own API for the registry (its journal), which no caller reaches."""
    first = posixpath.normpath("/" + unquote(path).replace("\\", "/")).lstrip("/").split("/", 1)[0]
    return first.lower() == "_internal"


async def serve_version(request: Request, version: Version, path: str, db: Session, principal: Principal,
                        run_id: str | None = None) -> Response:
    if _is_internal(path):
        return JSONResponse({"detail": "not found"}, status_code=404)
    requested_at = time.time()
    caller, link_id = recorded_caller(db, principal, version)
    if link_id is not None and _is_prediction(request, path, run_id):
        try:
            count_run(db, link_id)
        except ShareLinkError as error:
            return JSONResponse({"status": "quota", "detail": str(error)}, status_code=error.status)
    name = version.repository.name if link_id is None or not principal.share.anonymous else version.spec["name"]  # type: ignore[union-attr]
    db.close()  # its connection goes back to the pool: a wake-up, or a stream, may last minutes
    wait = not _wants_html(request) and "respond-async" not in request.headers.get("prefer", "")
    try:
        awake = await get_deployments(request).wake(version, wait=wait)
    except StillStarting as starting:
        if _wants_html(request):
            return HTMLResponse(STARTING_PAGE.format(name=name), status_code=503,
                                headers={"Retry-After": RETRY_AFTER})
        return JSONResponse({"status": "starting", "detail": str(starting)}, status_code=503,
                            headers={"Retry-After": RETRY_AFTER})
    except Unschedulable as error:
        return JSONResponse({"status": "unschedulable", "detail": str(error)}, status_code=503)
    except DeploymentFailed as error:
        return JSONResponse({"status": "failed", "detail": str(error)}, status_code=502)
    after = None
    if run_id:  # an API prediction: restart the idle clock, and put it in the run history once answered
        after = BackgroundTask(_after_prediction, get_deployments(request), awake.deployment_id)
    # Only a prediction carries a ticket: a worker handed one for every page view could journal made-up runs.
    headers = (run_headers(request, version, "api" if run_id else "demo", caller, awake, run_id, requested_at)
               if _is_prediction(request, path, run_id) else {})
    if run_id is None:  # demo traffic: Gradio queues the demo's predictions itself, in one process
        primary = awake.pool.primary
        return await proxy(request, primary, path, headers) if primary else worker_gone()
    try:
        async with get_deployments(request).slot(version, awake) as worker:
            return await forward(request, worker, path, headers, version.call_timeout, after)
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
