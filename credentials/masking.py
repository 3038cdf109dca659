"""Masking: how secrets are shown (at most `...` + last 4) and a logging filter that hides them."""
from __future__ import annotations

import contextlib
import contextvars
import logging
import logging.config
import re

from django.conf import settings

from .env_keys import global_env_secrets

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
    """Attached to every handler: rewrites the message and traceback of a record with secrets masked.

    A record is masked once (the first handler or logger filter that sees it); the handlers after it get the
    masked record. Where masking the arguments one by one is enough, the record keeps its arguments, so
    formatters that read them (uvicorn's access log) still work; otherwise the message is flattened.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_secrets_masked", False):
            return True
        try:
            _mask_record(record)
        except Exception as exc:  # noqa: BLE001 - never let a record through unmasked, never break the caller
            record.msg = f"<log message withheld: masking failed ({type(exc).__name__})>"
            record.args, record.exc_info, record.exc_text, record.stack_info = None, None, None, None
        record._secrets_masked = True
        return True


def _mask_record(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a broken format string must not drop the record
        message = str(record.msg)
        record.args = None
    masked = mask_text(message)
    if masked != message:
        if not (record.args and _mask_args(record)):
            record.msg, record.args = masked, None
    if record.exc_info:
        record.exc_text = mask_text(logging.Formatter().formatException(record.exc_info))
        record.exc_info = None
    elif record.exc_text:
        record.exc_text = mask_text(record.exc_text)
    if record.stack_info:
        record.stack_info = mask_text(record.stack_info)


def _mask_args(record: logging.LogRecord) -> bool:
    """Mask each string argument; keep the result if the whole message then holds nothing to mask."""
    args = record.args
    if isinstance(args, dict):
        masked_args = {k: mask_text(v) if isinstance(v, str) else v for k, v in args.items()}
    elif isinstance(args, tuple):
        masked_args = tuple(mask_text(a) if isinstance(a, str) else a for a in args)
    else:
        return False
    try:
        message = str(record.msg) % masked_args
    except Exception:  # noqa: BLE001
        return False
    if mask_text(message) != message:
        return False
    record.args = masked_args
    return True


def install_masking_everywhere() -> None:
    """Add SecretMaskingFilter to every handler that exists now: the root logger's, every named logger's
    (uvicorn's and gunicorn's own handlers, LiteLLM's, Django's defaults) and logging's last resort. Idempotent.
    Call it after a library that adds its own handlers was imported."""
    loggers = [logging.getLogger(), *(lg for lg in list(logging.root.manager.loggerDict.values())
                                      if isinstance(lg, logging.Logger))]
    handlers = [h for lg in loggers for h in lg.handlers]
    if logging.lastResort is not None:
        handlers.append(logging.lastResort)
    for handler in handlers:
        if not any(isinstance(f, SecretMaskingFilter) for f in handler.filters):
            handler.addFilter(SecretMaskingFilter())


def configure_logging(config: dict) -> None:
    """settings.LOGGING_CONFIG: Django's dictConfig, then the masking filter on every handler, including the
    ones a server configured before Django was loaded (uvicorn, gunicorn). Celery's worker and beat call it too
    (eneo_site.celery)."""
    logging.config.dictConfig(config)
    install_masking_everywhere()
