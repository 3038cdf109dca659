"""The id of the request being served: the caller's `X-Request-Id` when it sent a usable one, else a fresh one.
Answered in the `X-Request-Id` header, stored on the /v1 usage record and written into every log line
(`RequestIdFilter`), so an operator can follow one call from a client's report through the logs to the ledger."""
from __future__ import annotations

import logging
import re
import uuid
from contextvars import ContextVar

current_request_id: ContextVar[str] = ContextVar("request_id", default="-")

_USABLE = re.compile(r"[A-Za-z0-9._:@+=/-]{1,64}")  # printable, no spaces or quotes: safe in logs and headers


def request_id_from(sent: str | bytes | None) -> str:
    """The caller's id when usable (1-64 characters of letters, digits and ._:@+=/-), else a new one."""
    if isinstance(sent, bytes):
        sent = sent.decode("latin-1")
    if sent and _USABLE.fullmatch(sent):
        return sent
    return "req_" + uuid.uuid4().hex


class RequestIdFilter(logging.Filter):
    """Gives every record a `request_id` attribute (the current request's, or "-") for the log format."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = current_request_id.get()
        return True
