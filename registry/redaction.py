"""Keep secrets out of logs: access tokens, share-link tokens and registry JWTs are masked in
every record the registry's loggers (uvicorn's access log included) write."""

from __future__ import annotations

import logging
import re

SECRET = re.compile(r"\b(mhs?_)[A-Za-z0-9_-]{8,}|\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
LOGGERS = ("", "uvicorn", "uvicorn.access", "uvicorn.error", "modelhall", "authlib", "httpx")


def redact(text: str) -> str:
    return SECRET.sub(lambda match: f"{match.group(1) or ''}[redacted]", text)


class RedactSecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


REDACTOR = RedactSecrets()


def install_redaction() -> None:
    """Add the filter to the loggers and to their handlers (a filter on a logger misses its
    children's records; one on a handler sees them all). Idempotent: call it again once a
    server has set up its handlers."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if REDACTOR not in logger.filters:
            logger.addFilter(REDACTOR)
        for handler in logger.handlers:
            if REDACTOR not in handler.filters:
                handler.addFilter(REDACTOR)
