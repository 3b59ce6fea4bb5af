"""``/api/v1/tokens``: a user's personal access tokens. Managing them takes an ``admin``
token or a browser session; a token is shown once, when it is created."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException
from fastapi import Path as PathParam
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from modelhall.registry.api.schemas import MAX_ID
from modelhall.registry.auth.principal import Principal
from modelhall.registry.auth.scopes import SCOPE_HELP, SCOPES
from modelhall.registry.auth.tokens import create_access_token, hash_token
from modelhall.registry.context import get_db, get_principal
from modelhall.registry.db.models import AccessToken, User

router = APIRouter(prefix="/api/v1/tokens", tags=["tokens"])


class TokenCreate(BaseModel):
    name: str = Field(default="", max_length=128)
    scope: str = Field(default="read", description=SCOPE_HELP, pattern="^(" + "|".join(SCOPES) + ")$")
    expires_in_days: float | None = Field(default=90, gt=0, le=3650, description="null: never")


class TokenOut(BaseModel):
    id: int
    name: str
    scopes: list[str]
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked: bool
    token: str | None = Field(default=None, description="only in the answer that created it")


def token_out(record: AccessToken, token: str | None = None) -> TokenOut:
    return TokenOut(id=record.id, name=record.name, scopes=sorted(record.scope_set, key=SCOPES.index),
                    created_at=record.created_at, expires_at=record.expires_at, last_used_at=record.last_used_at,
                    revoked=record.revoked, token=token)


def token_owner(principal: Principal) -> User:
    if principal.user is None:
        raise HTTPException(401, "log in, or send an access token", headers={"WWW-Authenticate": "Bearer"})
    if "admin" not in principal.scopes:
        raise HTTPException(403, "managing tokens needs a token with the admin scope")
    return principal.user


@router.get("", response_model=list[TokenOut])
def list_tokens(db: Session = Depends(get_db), principal: Principal = Depends(get_principal)) -> list[TokenOut]:
    user = token_owner(principal)
    records = db.scalars(select(AccessToken).where(AccessToken.user_id == user.id).order_by(AccessToken.id))
    return [token_out(record) for record in records]


@router.post("", response_model=TokenOut, status_code=201)
def create_token(body: TokenCreate, db: Session = Depends(get_db),
                 principal: Principal = Depends(get_principal)) -> TokenOut:
    user = token_owner(principal)
    expires_at = datetime.now(UTC) + timedelta(days=body.expires_in_days) if body.expires_in_days else None
    token = create_access_token(db, user, {body.scope}, name=body.name, expires_at=expires_at)
    db.commit()
    record = db.scalar(select(AccessToken).where(AccessToken.token_hash == hash_token(token)))
    assert record is not None
    return token_out(record, token)


@router.delete("/{token_id}", response_model=TokenOut)
def revoke_token(token_id: Annotated[int, PathParam(ge=1, le=MAX_ID)], db: Session = Depends(get_db),
                 principal: Principal = Depends(get_principal)) -> TokenOut:
    user = token_owner(principal)
    record = db.get(AccessToken, token_id)
    if record is None or record.user_id != user.id:
        raise HTTPException(404, f"you have no token {token_id}")
    record.revoked = True
    db.commit()
    return token_out(record)
