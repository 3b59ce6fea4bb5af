"""The model server: the generated demo at ``/``, and beside it a JSON API.

- ``POST /predict``: ``{"inputs": {...}}`` as JSON (files as base64, a data: URL or
  ``{data, name}``), or multipart form fields and files. Bad input is a 422 naming the
  field; a model failure is a 500 and the server keeps serving.
- ``GET /spec``: the spec and the JSON Schema of a predict request.
- ``GET /healthz``: 200 once the model is loaded; 503 while starting or after a failed load.
- ``GET /_/health``, OpenFaaS's readiness probe: 200 once loading has ended, loaded or failed, so that
  the gateway, which holds every call until a replica is ready, lets the registry's ``/healthz`` through
  to learn why a model failed (otherwise it only ever saw the call time out).
- ``GET /metrics``: Prometheus metrics.
- ``GET /_internal/journal?after=N`` and ``GET /_internal/journal/files/{id}``: the run journal
  and its files, for the registry only (it sends ``X-Modelhall-Internal: 1``, a header the
  gateway never passes on from a caller, and never proxies ``/_internal``).

The API answers as soon as the model is loaded: it is plain Starlette (importing FastAPI
alone takes a third of a second), and Gradio (about two seconds to import) is imported and
mounted afterwards, in the background: once the model has loaded and no API prediction has
run for half a second, or at once when someone asks for the demo. Imports hold the GIL, so
building the demo any earlier would slow the model's loading and the prediction that woke it.
A browser asking for the page before then gets one that reloads itself; other demo requests
wait. So a cold start costs the model's load plus a small server, not Gradio.

``GET /healthz?wait=S`` answers when the model has loaded (or failed), or after ``S`` seconds:
whoever waits for a worker asks once instead of polling it (polls would take the GIL from the
loading model on every call).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, UploadFile
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from modelhall.adapters.models import ModelError
from modelhall.showcase.runner import Health, ModelRunner, NotReadyError, RunContext
from modelhall.showcase.values import InputError, Upload, coerce_text_values, request_schema, to_json

RETRY_AFTER_SECONDS = "5"
DEMO_WAIT_SECONDS = 60.0
DEMO_AFTER_QUIET_SECONDS = 0.5
HEALTH_WAIT_LIMIT_SECONDS = 30.0
INTERNAL_HEADER = "x-modelhall-internal"
logger = logging.getLogger(__name__)


def read_model_card(bundle: Path) -> str | None:
    """The README's text without its YAML metadata, read the way the Hugging Face Hub reads it."""
    from huggingface_hub import ModelCard

    readme = bundle / "README.md"
    return ModelCard.load(readme).text.strip() if readme.exists() else None


def build_demo_app(runner: ModelRunner, root_path: str | None) -> Starlette:
    """The Gradio demo as an app of its own (imports Gradio and FastAPI: slow, so called in a thread)."""
    import gradio as gr
    from fastapi import FastAPI

    from modelhall.showcase.demo import build_demo

    # No allowed_paths: the demo's file routes serve only Gradio's own cache (what the model
    # returned, which Gradio copies there) and what callers uploaded, never a bundle file.
    return gr.mount_gradio_app(FastAPI(), build_demo(runner, read_model_card(runner.bundle)), path="/",
                               footer_links=["api"], root_path=root_path)


DEMO_STARTING_PAGE = """<!doctype html><html><head><meta charset="utf-8"><meta http-equiv="refresh" content="1">
<title>Starting…</title><style>body{font-family:sans-serif;margin:4rem;color:#333}</style></head>
<body><h1>Starting the demo…</h1><p>The model is ready; its page is being built. This page reloads by itself.</p>
</body></html>"""


class Activity:
    """The API predictions in flight, and when the last one ended."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.last_ended = time.monotonic()
        self._idle = asyncio.Event()
        self._idle.set()

    @asynccontextmanager
    async def prediction(self) -> AsyncIterator[None]:
        self.in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.in_flight -= 1
            self.last_ended = time.monotonic()
            if self.in_flight == 0:
                self._idle.set()

    async def quiet(self, seconds: float) -> None:
        """Return once no prediction has run for ``seconds``, counted from now at the earliest."""
        asked = time.monotonic()
        while True:
            await self._idle.wait()
            remaining = max(self.last_ended, asked) + seconds - time.monotonic()
            if remaining <= 0 and self.in_flight == 0:
                return
            await asyncio.sleep(max(remaining, 0))


class LateDemo:
    """Stands at ``/`` for the demo until it is built. Meanwhile a browser asking for a page gets one
    that reloads itself; other requests (Gradio's client, assets) wait for the demo."""

    def __init__(self) -> None:
        self.app: ASGIApp | None = None
        self.error: str | None = None
        self.settled = asyncio.Event()
        self.wanted = asyncio.Event()  # someone asked for the demo before it was built

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.settled.is_set():
            self.wanted.set()
        if not self.settled.is_set() and _wants_page(scope):
            await HTMLResponse(DEMO_STARTING_PAGE, status_code=503,
                               headers={"Retry-After": "1"})(scope, receive, send)
            return
        if not self.settled.is_set():
            try:
                await asyncio.wait_for(self.settled.wait(), DEMO_WAIT_SECONDS)
            except TimeoutError:
                pass
        if self.app is not None:
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1013})
        else:
            detail = f"the demo could not be built: {self.error}" if self.error else "the demo is still being built"
            await _error(503 if self.error is None else 500, detail,
                         headers={"Retry-After": RETRY_AFTER_SECONDS})(scope, receive, send)

    async def attach(self, runner: ModelRunner, root_path: str | None, stopping: asyncio.Event,
                     quiet: asyncio.Task[None]) -> None:
        """Once ``quiet`` is done or someone asks for the demo: build it, run its startup (Gradio's
        queue) and serve it until ``stopping`` is set."""
        wanted = asyncio.ensure_future(self.wanted.wait())
        try:
            await asyncio.wait({quiet, wanted}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            quiet.cancel()
            wanted.cancel()
        try:
            demo = await run_in_threadpool(build_demo_app, runner, root_path)
        except Exception as error:  # noqa: BLE001 - the API keeps serving; the demo says why it cannot
            logger.exception("the demo could not be built")
            self.error = f"{type(error).__name__}: {error}"
            self.settled.set()
            return
        async with demo.router.lifespan_context(demo):
            self.app = demo
            self.settled.set()
            await stopping.wait()


def _wants_page(scope: Scope) -> bool:
    return scope["type"] == "http" and scope["method"] == "GET" and "text/html" in Headers(scope=scope).get("accept", "")


def create_server(runner: ModelRunner, root_path: str | None = None) -> Starlette:
    """The model server around ``runner`` (see :func:`open_runner`); it starts loading the model
    at startup unless that was started already (the CLI starts it first, so the model loads
    while the server is imported). Behind a proxy, ``root_path`` is the public prefix (Gradio
    builds every URL it hands out, output files included, from it and ``X-Forwarded-Host``)."""
    demo, activity, loaded = LateDemo(), Activity(), asyncio.Event()

    async def loaded_and_quiet() -> None:
        await loaded.wait()
        await activity.quiet(DEMO_AFTER_QUIET_SECONDS)

    @asynccontextmanager
    async def lifespan(_app: Starlette):  # type: ignore[no-untyped-def]
        loop = asyncio.get_running_loop()
        runner.when_settled(lambda: loop.call_soon_threadsafe(loaded.set))
        runner.start_loading()
        stopping = asyncio.Event()
        attaching = asyncio.create_task(demo.attach(runner, root_path, stopping,
                                                    asyncio.create_task(loaded_and_quiet())))
        yield
        stopping.set()
        if not demo.settled.is_set():
            attaching.cancel()
        with suppress(asyncio.CancelledError):
            await attaching

    app = Starlette(routes=[*_api_routes(runner, demo, activity, loaded), Mount("/", demo)], lifespan=lifespan)
    app.state.runner = runner
    app.state.demo = demo
    return app


def _error(status: int, message: str, field: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"message": message}
    if field:
        body["field"] = field
    return JSONResponse({"error": body}, status_code=status, headers=headers)


async def _request_inputs(request: Request) -> dict[str, Any]:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        form = await request.form()
        inputs: dict[str, Any] = {}
        for name, value in form.multi_items():
            inputs[name] = Upload(await value.read(), value.filename) if isinstance(value, UploadFile) else value
        return inputs
    try:
        body = await request.json()
    except ValueError:
        raise InputError("inputs", "the body must be JSON like {\"inputs\": {...}} or a multipart form") from None
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), dict):
        raise InputError("inputs", "the body must be a JSON object with an \"inputs\" object")
    return body["inputs"]


def _api_routes(runner: ModelRunner, demo: LateDemo, activity: Activity, loaded: asyncio.Event) -> list[Route]:
    spec = runner.spec

    async def predict(request: Request) -> JSONResponse:
        try:
            inputs = await _request_inputs(request)
            if not request.headers.get("content-type", "").startswith("application/json"):
                inputs = coerce_text_values(spec, inputs)
            context = RunContext.from_headers(request.headers, source="api")
            async with activity.prediction():
                prediction = await run_in_threadpool(runner.predict, inputs, context)
        except InputError as error:
            return _error(422, error.message, error.field)
        except NotReadyError as error:
            return _error(503, f"the model is not ready: {error}", headers={"Retry-After": RETRY_AFTER_SECONDS})
        except ModelError as error:
            return _error(500, f"the model failed: {error}")
        return JSONResponse({"outputs": to_json(spec, prediction.outputs), "digest": runner.digest,
                             "duration_ms": round(prediction.seconds * 1000, 3)})

    def get_spec(_request: Request) -> JSONResponse:
        return JSONResponse({"spec": spec.to_json_dict(), "digest": runner.digest,
                             "request_schema": request_schema(spec)})

    async def healthz(request: Request) -> JSONResponse:
        try:
            wait = min(float(request.query_params.get("wait", 0)), HEALTH_WAIT_LIMIT_SECONDS)
        except ValueError:
            return _error(422, "wait must be a number of seconds", "wait")
        if wait > 0:
            with suppress(TimeoutError):
                await asyncio.wait_for(loaded.wait(), wait)
        body = {"status": runner.health.value, "model": spec.name, "digest": runner.digest,
                "demo": "failed" if demo.error else "ready" if demo.app else "building"}
        if runner.error:
            body["error"] = runner.error
        ready = runner.health is Health.READY
        return JSONResponse(body, status_code=200 if ready else 503,
                            headers=None if ready else {"Retry-After": RETRY_AFTER_SECONDS})

    def loading_ended(_request: Request) -> JSONResponse:
        ended = runner.health in (Health.READY, Health.FAILED)
        return JSONResponse({"status": runner.health.value}, status_code=200 if ended else 503)

    def metrics(_request: Request) -> Response:
        return Response(generate_latest(runner.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return [Route("/predict", predict, methods=["POST"]), Route("/spec", get_spec), Route("/healthz", healthz),
            Route("/_/health", loading_ended),
            Route("/metrics", metrics), *_journal_routes(runner)]


JOURNAL_PAGE = 200


def _journal_routes(runner: ModelRunner) -> list[Route]:
    def internal(request: Request) -> bool:
        return request.headers.get(INTERNAL_HEADER) == "1"

    def journal(request: Request) -> Response:
        if not internal(request):
            return _error(404, "not found")
        try:
            after = int(request.query_params.get("after", 0))
            limit = min(int(request.query_params.get("limit", JOURNAL_PAGE)), JOURNAL_PAGE)
        except ValueError:
            return _error(422, "after and limit must be integers")
        return JSONResponse({"entries": runner.journal.read(after, limit)})

    def journal_file(request: Request) -> Response:
        path = runner.journal.file(request.path_params["file_id"]) if internal(request) else None
        if path is None or not path.is_file():
            return _error(404, "no such file")
        return FileResponse(path)

    return [Route("/_internal/journal", journal), Route("/_internal/journal/files/{file_id}", journal_file)]
