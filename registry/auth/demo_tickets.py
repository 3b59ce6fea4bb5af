"""Demo tickets and demo passes: who a browser is, carried from the registry's origin to the demo origin.

Demos live on an origin of their own, which never sees the registry's session cookie. When the
registry has decided that a viewer may run a demo, it hands the browser a **ticket**: a JWT signed
with the registry's key, for one demo (``{repository id}@{digest}``), valid for
:data:`TICKET_SECONDS` and spent on first use. The demo origin exchanges it for a **pass**, its own
cookie, scoped to that demo's path. Both only name who the viewer is (a user, a share link); every
request is still decided by the policy, so revoking a link or a membership takes effect at once.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt
from sqlalchemy import delete, insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from modelhall.registry.auth.tokens import ISSUER, JWT_ALGORITHM
from modelhall.registry.db.models import SpentTicket

TICKET_SECONDS = 60
TICKET_AUDIENCE = "modelhall-demo-ticket"
PASS_AUDIENCE = "modelhall-demo-pass"


class TicketRefused(Exception):
    """A ticket that is forged, expired, spent or for another demo; the message says which."""


@dataclass(frozen=True)
class DemoPass:
    """Who may use demo ``key``: a user, a share link, or both (a logged-in holder of a link)."""

    key: str
    user_id: int | None = None
    link_id: int | None = None


def _claims(demo_pass: DemoPass, audience: str, seconds: int) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": ISSUER, "aud": audience, "iat": now, "exp": now + seconds, "jti": uuid.uuid4().hex,
            "key": demo_pass.key, "uid": demo_pass.user_id, "sl": demo_pass.link_id}


def _pass_of(claims: dict[str, Any]) -> DemoPass:
    user_id, link_id = claims.get("uid"), claims.get("sl")
    return DemoPass(key=str(claims["key"]), user_id=user_id if isinstance(user_id, int) else None,
                    link_id=link_id if isinstance(link_id, int) else None)


def issue_ticket(signing_key: str, demo_pass: DemoPass, seconds: int = TICKET_SECONDS) -> str:
    return jwt.encode(_claims(demo_pass, TICKET_AUDIENCE, seconds), signing_key, algorithm=JWT_ALGORITHM)


class SpentTickets:
    """The tickets used so far, in the database: every replica sees a ticket another one took.

    A ticket is spent by inserting its id, which one process at most can do; each row is kept until
    the ticket would have expired anyway, so the table stays small.
    """

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def spend(self, ticket_id: str, expires_at: float) -> bool:
        """Mark a ticket used; False if it was already (here or on another replica)."""
        now = datetime.now(UTC)
        with self.sessions() as db:
            db.execute(delete(SpentTicket).where(SpentTicket.expires_at < now))
            try:
                db.execute(insert(SpentTicket).values(id=ticket_id[:64],
                                                      expires_at=datetime.fromtimestamp(expires_at, UTC)))
                db.commit()
            except IntegrityError:
                db.rollback()
                return False
        return True


AGAIN = "open the demo again from the registry or the gallery"


def redeem_ticket(signing_key: str, ticket: str, key: str, spent: SpentTickets) -> DemoPass:
    """The pass a ticket grants for demo ``key``, or :class:`TicketRefused`."""
    try:
        claims = jwt.decode(ticket, signing_key, algorithms=[JWT_ALGORITHM], audience=TICKET_AUDIENCE,
                            issuer=ISSUER, options={"require": ["exp", "jti", "key"]})
    except jwt.ExpiredSignatureError:
        raise TicketRefused(f"this demo ticket has expired (a ticket lasts {TICKET_SECONDS} s): {AGAIN}") from None
    except jwt.InvalidTokenError:
        raise TicketRefused(f"this demo ticket is not valid: {AGAIN}") from None
    if claims["key"] != key:
        raise TicketRefused(f"this demo ticket is for another demo: {AGAIN}")
    if not spent.spend(str(claims["jti"]), float(claims["exp"])):  # last: a refused ticket is not spent
        raise TicketRefused(f"this demo ticket has been used already: {AGAIN}")
    return _pass_of(claims)


def issue_pass(signing_key: str, demo_pass: DemoPass, seconds: int) -> str:
    """The demo origin's cookie value for ``demo_pass``."""
    return jwt.encode(_claims(demo_pass, PASS_AUDIENCE, seconds), signing_key, algorithm=JWT_ALGORITHM)


def read_pass(signing_key: str, value: str, key: str) -> DemoPass | None:
    """The pass in a demo cookie if it is genuine, current and for demo ``key``."""
    try:
        claims = jwt.decode(value, signing_key, algorithms=[JWT_ALGORITHM], audience=PASS_AUDIENCE, issuer=ISSUER,
                            options={"require": ["exp", "key"]})
    except jwt.InvalidTokenError:
        return None
    return _pass_of(claims) if claims["key"] == key else None
