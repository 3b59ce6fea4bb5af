"""The registry service: OCI Distribution API, token endpoint and REST API in one FastAPI app."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from modelhall.adapters.storage import open_blob_store
from modelhall.registry.api import repos
from modelhall.registry.auth import routes as token_routes
from modelhall.registry.auth.principal import AuthenticationError
from modelhall.registry.context import RegistryContext
from modelhall.registry.db.session import make_engine, make_session_factory, migrate
from modelhall.registry.oci import base, blobs, manifests, referrers, tags, uploads
from modelhall.registry.oci.access import challenge
from modelhall.registry.oci.errors import OCIError, oci_error_response
from modelhall.settings import Settings, load_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.database_url)
    migrate(engine)
    app = FastAPI(title="Modelhall registry", version="0.1.0",
                  description="OCI Distribution API for model bundles, and the Modelhall REST API.")
    app.state.context = RegistryContext(settings=settings, engine=engine, sessions=make_session_factory(engine),
                                        store=open_blob_store(settings.storage_url))
    app.add_exception_handler(OCIError, oci_error_response)
    app.add_exception_handler(AuthenticationError, _authentication_failed)
    # Uploads first: /blobs/uploads/ must not be read as a blob named "uploads".
    for module in (base, tags, uploads, blobs, manifests, referrers):
        app.include_router(module.router, tags=["oci"])
    app.include_router(token_routes.router, tags=["auth"])
    app.include_router(repos.router)
    return app


async def _authentication_failed(request: Request, error: Exception) -> JSONResponse:
    """Wrong, expired or revoked credentials: 401 in the format of the API that was called."""
    if request.url.path.startswith("/v2"):
        return await oci_error_response(request, OCIError("UNAUTHORIZED", str(error), headers=challenge(request)))
    headers = {"WWW-Authenticate": 'Basic realm="modelhall"'} if request.url.path == "/token" else {}
    return JSONResponse({"detail": str(error)}, status_code=401, headers=headers)
