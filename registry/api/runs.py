"""``/api/v1/repos/{owner}/{name}/runs``: run history, async runs, and the deployment's logs.

The run history is for the model's members (``reader`` and up, with a ``deploy`` token);
a share link sees the runs made through it. One run, by its id, is open to whoever may
see the model: the id is the capability, as with an async run one started oneself.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from modelhall.registry.api.repos import visible_repository
from modelhall.registry.api.schemas import MAX_ID, MAX_OFFSET
from modelhall.registry.auth.policy import Action, permitted_actions
from modelhall.registry.auth.principal import Principal
from modelhall.registry.context import get_db, get_principal
from modelhall.registry.db.models import Deployment, Repository, Run, RunFile, Worker
from modelhall.registry.deployments import Deployments, handle_of
from modelhall.registry.auth.sharing import ShareLinkError, count_run
from modelhall.registry.catalog import count_runs
from modelhall.bounded import TooDeep, load_json
from modelhall.registry.gateway import (
    BodyTooLarge,
    body_limit,
    get_deployments,
    read_body,
    recorded_caller,
    resolve_version,
    split_reference,
    too_large,
)
from modelhall.registry.runs import new_run_id, recorded_files, stored_inputs
from modelhall.registry.media import file_answer_headers

router = APIRouter(prefix="/api/v1/repos", tags=["runs"])
TERMINAL = ("succeeded", "failed")
EVENT_POLL_SECONDS = 0.3


def run_json(run: Run, show_caller: bool) -> dict[str, Any]:
    return {
        "id": run.id, "digest": run.digest, "source": run.source, "status": run.status, "cold": run.cold,
        "caller": run.caller if show_caller else None, "caller_hidden": not show_caller and run.caller is not None,
        "inputs": run.inputs, "outputs": run.outputs, "error": run.error, "duration_ms": run.duration_ms,
        "created_at": run.created_at.isoformat(), "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "logs": run.logs if show_caller else None,
    }


def is_member(db: Session, principal: Principal, repository: Repository) -> bool:
    """May read every run and see who asked (a share link does not count)."""
    return Action.READ_RUNS in permitted_actions(db, replace(principal, share=None), repository.name, repository)


def own_run(principal: Principal, run: Run) -> bool:
    own_callers = {principal.name, principal.share.caller if principal.share else None} - {None}
    return run.caller in own_callers


def _visible_run(db: Session, principal: Principal, owner: str, name: str, run_id: str) -> tuple[Run, bool]:
    repository = visible_repository(db, principal, f"{owner}/{name}")
    run = db.get(Run, run_id)
    if run is None or run.repository_id != repository.id:
        raise HTTPException(404, f"{owner}/{name} has no run {run_id[:40]}")
    return run, is_member(db, principal, repository) or own_run(principal, run)


@router.get("/{owner}/{name}/runs")
def list_runs(owner: str, name: str, status: str | None = None, source: str | None = None,
              share_link: int | None = Query(default=None, ge=1, le=MAX_ID,
                                             description="only the runs made through this share link"),
              limit: int = Query(default=50, ge=1, le=500), offset: int = Query(default=0, ge=0, le=MAX_OFFSET),
              db: Session = Depends(get_db), principal: Principal = Depends(get_principal),
              deployments: Deployments = Depends(get_deployments)) -> list[dict[str, Any]]:
    """Runs of a repository, newest first, filtered by status (queued, running, succeeded, failed), source
    (api, demo, async) or share link. Members see every run, a share link the runs made through it."""
    repository = visible_repository(db, principal, f"{owner}/{name}", Action.READ_RUNS)
    deployments.collect_runs(repository.id)  # what the workers answered until now, before it is listed
    query = select(Run).where(Run.repository_id == repository.id).order_by(Run.created_at.desc())
    member = is_member(db, principal, repository)
    if not member:
        assert principal.share is not None  # READ_RUNS without membership comes from a share link only
        query = query.where(Run.caller == principal.share.caller)
    if share_link is not None:
        query = query.where(Run.caller == f"share-link:{share_link}")
    if status:
        query = query.where(Run.status == status)
    if source:
        query = query.where(Run.source == source)
    return [run_json(run, member or own_run(principal, run)) for run in db.scalars(query.offset(offset).limit(limit))]


@router.post("/{owner}/{name_ref}/runs", status_code=202)
async def start_run(owner: str, name_ref: str, request: Request, db: Session = Depends(get_db),
                    principal: Principal = Depends(get_principal)) -> JSONResponse:
    """Queue a prediction and answer at once with its id; follow it at ``…/runs/{id}`` or ``…/runs/{id}/events``."""
    name, reference = split_reference(name_ref)
    try:
        version = resolve_version(db, principal, f"{owner}/{name}", reference)
    except LookupError as error:
        raise HTTPException(404, str(error)) from None
    limit = body_limit(version.spec, request.app.state.context.settings.max_request_bytes)
    try:
        body = load_json(await read_body(request, limit))
    except BodyTooLarge:
        return too_large(limit)
    except TooDeep as error:
        raise HTTPException(400, f"the request body is refused: {error}") from None
    except ValueError:
        raise HTTPException(422, "the body must be JSON like {\"inputs\": {...}}") from None
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), dict):
        raise HTTPException(422, "the body must be a JSON object with an \"inputs\" object")
    caller, link_id = recorded_caller(db, principal, version)
    if link_id is not None:
        try:
            count_run(db, link_id)
        except ShareLinkError as error:
            raise HTTPException(error.status, str(error)) from None
    context = request.app.state.context
    inputs, stored = await run_in_threadpool(stored_inputs, context.store, body["inputs"])
    run = Run(id=new_run_id(), repository_id=version.repository.id, digest=version.digest, source="async",
              caller=caller, status="queued", inputs=inputs)
    db.add(run)
    db.flush()
    db.add_all(RunFile(run_id=run.id, digest=digest) for digest in stored)
    count_runs(db, version.repository.id)
    db.commit()
    url = f"/api/v1/repos/{owner}/{name}/runs/{run.id}"
    return JSONResponse({"id": run.id, "status": "queued", "url": url, "events": f"{url}/events"},
                        status_code=202, headers={"Location": url})


@router.get("/{owner}/{name}/runs/{run_id}")
def get_run(owner: str, name: str, run_id: str, db: Session = Depends(get_db),
            principal: Principal = Depends(get_principal)) -> dict[str, Any]:
    run, show = _visible_run(db, principal, owner, name, run_id)
    return run_json(run, show)


@router.get("/{owner}/{name}/runs/{run_id}/events")
async def follow_run(owner: str, name: str, run_id: str, request: Request, db: Session = Depends(get_db),
                     principal: Principal = Depends(get_principal)) -> StreamingResponse:
    """Server-sent events: one ``status`` event per change, the last one with the whole run."""
    _visible_run(db, principal, owner, name, run_id)
    db.close()  # the events may take minutes; each poll below has a session of its own
    sessions = request.app.state.context.sessions

    def current() -> tuple[str, dict[str, Any]]:
        with sessions() as session:
            run = session.get(Run, run_id)
            assert run is not None
            repository = session.get(Repository, run.repository_id)
            assert repository is not None
            return run.status, run_json(run, is_member(session, principal, repository) or own_run(principal, run))

    async def events() -> AsyncIterator[bytes]:
        last = None
        while True:
            status, body = await run_in_threadpool(current)
            if status != last:
                yield f"event: status\ndata: {json.dumps(body)}\n\n".encode()
                last = status
            if status in TERMINAL:
                return
            await asyncio.sleep(EVENT_POLL_SECONDS)

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


@router.get("/{owner}/{name}/runs/{run_id}/files/{digest}")
def get_run_file(owner: str, name: str, run_id: str, digest: str, request: Request, db: Session = Depends(get_db),
                 principal: Principal = Depends(get_principal)) -> Response:
    """A file input or output of a run, by its digest: one the platform stored for that run."""
    run, _ = _visible_run(db, principal, owner, name, run_id)
    recorded = recorded_files(db, run.id)
    files = {v["digest"]: v for v in [*run.inputs.values(), *(run.outputs or {}).values()]
             if isinstance(v, dict) and v.get("digest") in recorded}
    if digest not in files:
        raise HTTPException(404, f"run {run_id} has no file {digest[:80]}")
    data = b"".join(request.app.state.context.store.read(digest))
    claimed = files[digest].get("mime_type")
    media_type, headers = file_answer_headers(str(files[digest].get("name") or "file"),
                                              claimed if isinstance(claimed, str) else None, data[:64])
    return Response(data, media_type=media_type, headers=headers)  # not media: a download, whatever it claims


def reused_from(db: Session, deployment: Deployment) -> str:
    """A line saying whose build made the environment, when this version only reused it. Another
    repository's version is not named: the viewer may not see it."""
    first = db.scalar(select(Deployment).where(Deployment.environment == deployment.environment)
                      .order_by(Deployment.id))
    if first is None or first.id == deployment.id:
        return ""
    if first.repository_id != deployment.repository_id:
        return "This version reused the environment built earlier for another model's version.\n"
    return f"This version reused the environment built earlier for {first.digest}.\n"


@router.get("/{owner}/{name_ref}/deployment/logs", response_class=PlainTextResponse)
def deployment_logs(owner: str, name_ref: str, request: Request, build: bool = False,
                    lines: int = Query(default=200, ge=1, le=5000), db: Session = Depends(get_db),
                    principal: Principal = Depends(get_principal)) -> PlainTextResponse:
    """The environment build's log (``build=true``) or the newest worker's output; needs write access."""
    name, reference = split_reference(name_ref)
    visible_repository(db, principal, f"{owner}/{name}", Action.PUSH)
    try:
        version = resolve_version(db, principal, f"{owner}/{name}", reference, Action.VIEW)
    except LookupError as error:
        raise HTTPException(404, str(error)) from None
    deployment = db.scalar(select(Deployment).where(Deployment.repository_id == version.repository.id,
                                                    Deployment.digest == version.digest))
    if deployment is None:
        raise HTTPException(404, f"{owner}/{name_ref} has not been built or run yet")
    runtime = request.app.state.deployments.runtime
    if build:
        if deployment.environment is None:
            return PlainTextResponse(deployment.build_error or "the build has not finished")
        return PlainTextResponse(reused_from(db, deployment) + runtime.build_log(deployment.environment, lines))
    worker = db.scalar(select(Worker).where(Worker.deployment_id == deployment.id).order_by(Worker.id.desc()))
    if worker is None:
        raise HTTPException(404, f"{owner}/{name_ref} has had no worker yet")
    return PlainTextResponse(runtime.logs(handle_of(worker), lines))
