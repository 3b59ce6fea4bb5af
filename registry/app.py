"""The registry service: OCI Distribution API, token endpoint and REST API in one FastAPI app."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI, Request
from fastapi_offline import FastAPIOffline
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.middleware.sessions import SessionMiddleware

from modelhall.adapters.runtimes.base import EnvironmentArtifacts, Runtime
from modelhall.adapters.runtimes.local import LocalRuntime
from modelhall.adapters.runtimes.openfaas import open_openfaas_runtime
from modelhall.adapters.storage import open_blob_store
from modelhall.registry import demo_origin, gateway
from modelhall.registry.api import repos, runs, shares, tokens
from modelhall.registry.auth import login_links, oidc
from modelhall.registry.auth import routes as token_routes
from modelhall.registry.auth.csrf import SameOriginForSessions
from modelhall.registry.auth.demo_tickets import SpentTickets
from modelhall.registry.auth.principal import AuthenticationError
from modelhall.registry.catalog import refresh_stale_catalogs
from modelhall.registry.context import RegistryContext
from modelhall.registry.db.session import make_engine, make_session_factory, migrate
from modelhall.registry.deployments import Deployments
from modelhall.registry.environments import StoredEnvironments
from modelhall.registry.gc import run_periodic_collection
from modelhall.registry.redaction import install_redaction
from modelhall.registry.security_headers import SecurityHeaders
from modelhall.registry.runs import AsyncRunner
from modelhall.registry.oci import base, blobs, manifests, referrers, tags, uploads
from modelhall.registry.oci.access import challenge
from modelhall.registry.oci.errors import OCIError, oci_error_response
from modelhall.settings import Settings, load_settings


SESSION_COOKIE = "modelhall_session"
DOCS_ASSETS = "/docs/assets"


def open_runtime(settings: Settings, artifacts: EnvironmentArtifacts) -> Runtime:
    if settings.runtime == "kubernetes":
        from modelhall.adapters.runtimes.kubernetes import KubernetesRuntime  # the client is imported only here

        return KubernetesRuntime(settings, artifacts)
    if settings.runtime == "openfaas":
        return open_openfaas_runtime(settings, artifacts)
    return LocalRuntime(settings.data_dir, allow_network=settings.allow_model_network)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    install_redaction()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.database_url)
    migrate(engine)
    context = RegistryContext(settings=settings, engine=engine, sessions=make_session_factory(engine),
                              store=open_blob_store(settings.storage_url, settings.s3_defaults))
    with context.sessions() as db:
        refresh_stale_catalogs(db)
    runtime = open_runtime(settings, StoredEnvironments(context.sessions, context.store))
    deployments = Deployments(context, runtime, wake_timeout=settings.wake_timeout)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        install_redaction()  # again: the server has set up its log handlers by now
        await run_in_threadpool(deployments.recover)
        await run_in_threadpool(deployments.leases.hold, deployments.alive_lease)  # before any run is claimed
        heartbeat = asyncio.create_task(deployments.keep_alive())
        reaper = asyncio.create_task(deployments.run_reaper(settings.reaper_interval))
        app.state.worker_clients = gateway.WorkerClients()
        async_runs = asyncio.create_task(AsyncRunner(context, partial(gateway.execute_async_run, app),
                                                     holder=deployments.leases.holder).run_forever())
        collector = asyncio.create_task(run_periodic_collection(context)) if settings.gc_interval > 0 else None
        yield
        if collector:
            collector.cancel()
        async_runs.cancel()
        await app.state.worker_clients.close()
        reaper.cancel()
        heartbeat.cancel()
        await run_in_threadpool(deployments.stop_all)

    # Swagger UI and ReDoc from the assets fastapi-offline ships, so /docs works with no internet.
    app = FastAPIOffline(title="Modelhall registry", version="0.1.0", lifespan=lifespan,
                         static_url=DOCS_ASSETS,
                  description="OCI Distribution API for model bundles, the Modelhall REST API, and the demo gateway.")
    app.state.context = context
    app.state.deployments = deployments
    app.state.oauth = oidc.make_oauth(settings)
    app.state.demo_tickets = SpentTickets(context.sessions)  # shared with the demo origin's app (demo_origin.create_demo_app)
    app.add_middleware(SameOriginForSessions, session_cookie=SESSION_COOKIE, own_origins={settings.url, *([settings.gallery_url] if settings.gallery_url else [])})
    app.add_middleware(SessionMiddleware, secret_key=settings.signing_key, session_cookie=SESSION_COOKIE,
                       max_age=settings.session_max_age, same_site="lax",
                       https_only=settings.url.startswith("https://"))  # signed, HttpOnly
    app.add_middleware(SecurityHeaders, gallery_url=settings.gallery_url)  # outermost: on every answer
    app.add_exception_handler(OCIError, oci_error_response)
    app.add_exception_handler(AuthenticationError, _authentication_failed)
    # Uploads first: /blobs/uploads/ must not be read as a blob named "uploads".
    for module in (base, tags, uploads, blobs, manifests, referrers):
        app.include_router(module.router, tags=["oci"])
    app.include_router(token_routes.router, tags=["auth"])
    app.include_router(oidc.router)
    app.include_router(login_links.router)
    # Before the REST API's /api/v1/repos/{name:path}, which would take …/predict and …/runs for names:
    app.include_router(gateway.router)
    app.include_router(demo_origin.registry_router)  # /demo/… and /live/… lead to the demo origin
    app.include_router(runs.router)
    app.include_router(shares.router)
    app.include_router(tokens.router)
    app.include_router(repos.router)
    return app


async def _authentication_failed(request: Request, error: Exception) -> JSONResponse:
    """Wrong, expired or revoked credentials: 401 in the format of the API that was called."""
    if request.url.path.startswith("/v2"):
        return await oci_error_response(request, OCIError("UNAUTHORIZED", str(error), headers=challenge(request)))
    headers = {"WWW-Authenticate": 'Basic realm="modelhall"'} if request.url.path == "/token" else {}
    return JSONResponse({"detail": str(error)}, status_code=401, headers=headers)
