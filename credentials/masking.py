"""Masking: how secrets are shown (at most `...` + last 4) and a logging filter that hides them."""
from __future__ import annotations

import contextlib
import contextvars
import logging
import re

from django.conf import settings

MASK_SHORT = "***"


def mask(secret: str | None) -> str:
    """`...` + the last 4 characters; values of 4 characters or fewer show as `***`."""
    if not secret:
        return ""
    secret = str(secret)
    if len(secret) <= 4:
        return MASK_SHORT
    return "..." + secret[-4:]


def mask_last4(last4: str | None) -> str:
    """Mask from a stored last4 column (empty when the secret was 4 characters or fewer)."""
    return "..." + last4 if last4 else MASK_SHORT


def last4_of(secret: str) -> str:
    return secret[-4:] if len(secret) > 4 else ""


# Secrets in use by the current call (a context variable: it ends with the call, nothing is kept).
_call_secrets: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("call_secrets", default=())


@contextlib.contextmanager
def secret_scope(*secrets: str | None):
    """Within this block, log lines also mask these secrets (e.g. the key of the upstream being called)."""
    token = _call_secrets.set(_call_secrets.get() + tuple(s for s in secrets if s and len(s) >= 6))
    try:
        yield
    finally:
        _call_secrets.reset(token)


# Shapes that carry keys in free text: headers, query strings, JSON/kwargs, well-known key formats.
_PATTERNS = [
    re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?(?:bearer|basic)\s+)([^\s'\",}]+)"),
    re.compile(r"(?i)((?:x-api-key|api-key|api_key|apikey|x-goog-api-key|secret|password|token)['\"]?\s*[:=]\s*['\"]?)([^\s'\",&}]{6,})"),
    re.compile(r"(?i)([?&](?:key|api_key|api-key|token|access_token|sig)=)([^&\s'\"]+)"),
    re.compile(r"\b((?:sk|pk|rk)-(?:ant-|proj-|live-|test-)?)([A-Za-z0-9_\-]{12,})"),
]


def _static_secrets() -> list[str]:
    values = [settings.SECRET_KEY, settings.ENCRYPTION_KEY, settings.SUPER_API_KEY, *settings.ENCRYPTION_KEYS_OLD]
    from .resolution import global_env_secrets  # late: resolution imports models

    values.extend(global_env_secrets())
    return [v for v in values if v and len(v) >= 6]


def mask_text(text: str) -> str:
    for secret in (*_static_secrets(), *_call_secrets.get()):
        if secret in text:
            text = text.replace(secret, mask(secret))
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + mask(m.group(2)), text)
    return text


class SecretMaskingFilter(logging.Filter):
    """Attached to every handler: rewrites the formatted message and traceback with secrets masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string must not drop the record
            message = str(record.msg)
        record.msg = mask_text(message)
        record.args = None
        if record.exc_info:
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_text = mask_text(text)
            record.exc_info = None
        if record.stack_info:
            record.stack_info = mask_text(record.stack_info)
        return True
