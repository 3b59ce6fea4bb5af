"""What the registry's routes share: settings, database, blob store."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace

from fastapi import Depends, Request
from sqlalchemy import Engine, QueuePool
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from modelhall.adapters.storage import BlobStore
from modelhall.registry.auth.principal import AuthenticationError, Principal, principal_from_header, principal_from_session
from modelhall.registry.auth.sharing import ShareLinkError, find_share_link, grant_of
from modelhall.settings import Settings


@dataclass
class RegistryContext:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    store: BlobStore


def get_context(request: Request) -> RegistryContext:
    return request.app.state.context


async def get_db(request: Request) -> AsyncIterator[Session]:
    """A session for the request. A coroutine, so it costs no thread hop: opening a session
    makes no connection (its first query does, in whichever thread runs it), and closing one
    returns its connection to the pool, which waits for no other request."""
    with get_context(request).sessions() as db:
        yield db


SHARE_HEADER = "x-modelhall-share"


async def get_principal(request: Request, db: Session = Depends(get_db)) -> Principal:
    """Who asks: the ``Authorization`` header, else the browser session; plus the share link
    the request carries (the ``X-Modelhall-Share`` header, or the one the session opened)."""
    return await find_principal_with(_find_principal, request, db)


async def find_principal_with(find: Callable[[Request, Session], Principal], request: Request,
                              db: Session) -> Principal:
    """``find(request, db)`` on the event loop while the pool has a connection idle (a thread hop
    costs more than the indexed lookups), and in a thread otherwise: the loop must not wait for a
    connection, since the requests that hold them may need the loop to give them back."""
    if _has_idle_connection(get_context(request).engine):
        return find(request, db)
    return await run_in_threadpool(find, request, db)


def _has_idle_connection(engine: Engine) -> bool:
    pool = engine.pool
    return isinstance(pool, QueuePool) and pool.checkedin() > 0


def _find_principal(request: Request, db: Session) -> Principal:
    header = request.headers.get("authorization")
    if header:
        principal = principal_from_header(db, header, get_context(request).settings.signing_key)
        if principal.for_pods_and_builds and not request.url.path.startswith("/v2/"):
            raise AuthenticationError("this credential is a model pod's or a build's: it reaches the OCI API only")
    else:
        principal = principal_from_session(db, request.session)
    share_token = request.headers.get(SHARE_HEADER) or request.session.get("share")
    if not share_token:
        return principal
    try:
        link = find_share_link(db, share_token)
    except ShareLinkError as error:
        if request.headers.get(SHARE_HEADER):
            raise AuthenticationError(str(error)) from None
        request.session.pop("share", None)  # the link the browser opened has expired or was revoked
        return principal
    return replace(principal, share=grant_of(link))
