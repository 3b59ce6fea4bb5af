"""What the registry's routes share: settings, database, blob store."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from fastapi import Depends, Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from modelhall.adapters.storage import BlobStore
from modelhall.registry.auth.principal import Principal, principal_from_header
from modelhall.settings import Settings


@dataclass
class RegistryContext:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    store: BlobStore


def get_context(request: Request) -> RegistryContext:
    return request.app.state.context


def get_db(context: RegistryContext = Depends(get_context)) -> Iterator[Session]:
    with context.sessions() as db:
        yield db


def get_principal(request: Request, db: Session = Depends(get_db),
                  context: RegistryContext = Depends(get_context)) -> Principal:
    return principal_from_header(db, request.headers.get("authorization"), context.settings.signing_key)
