"""One JSON error shape for the REST API: {"detail": <message or list of field errors>}."""
from __future__ import annotations

import logging

from django.core.exceptions import ValidationError
from django.db import IntegrityError

from credentials.crypto import DecryptionError
from credentials.provider_rules import UnknownProviderType
from credentials.resolution import CredentialError
from providers.selectors import Forbidden, NotFound
from providers.services import Conflict

log = logging.getLogger("eneo.api")


def validation_error_detail(exc: ValidationError, loc_prefix: str = "body") -> list[dict]:
    if hasattr(exc, "error_dict"):
        return [
            {"loc": [loc_prefix, field], "msg": " ".join(str(m) for m in messages), "type": "value_error"}
            for field, messages in exc.message_dict.items()
        ]
    return [{"loc": [loc_prefix], "msg": " ".join(exc.messages), "type": "value_error"}]


def install(api):
    @api.exception_handler(ValidationError)
    def on_validation_error(request, exc):
        return api.create_response(request, {"detail": validation_error_detail(exc)}, status=422)

    @api.exception_handler(UnknownProviderType)
    def on_unknown_provider(request, exc):
        detail = [{"loc": ["path", "provider"], "msg": str(exc), "type": "unknown_provider"}]
        return api.create_response(request, {"detail": detail}, status=422)

    @api.exception_handler(CredentialError)
    def on_credential_error(request, exc):
        return api.create_response(request, {"detail": str(exc), "code": exc.code}, status=409)

    @api.exception_handler(DecryptionError)
    def on_decryption_error(request, exc):
        return api.create_response(request, {"detail": str(exc), "code": "credential_undecryptable"}, status=409)

    @api.exception_handler(NotFound)
    def on_not_found(request, exc):
        return api.create_response(request, {"detail": str(exc)}, status=404)

    @api.exception_handler(Forbidden)
    def on_forbidden(request, exc):
        return api.create_response(request, {"detail": str(exc)}, status=403)

    @api.exception_handler(Conflict)
    def on_conflict(request, exc):
        return api.create_response(request, {"detail": str(exc)}, status=409)

    @api.exception_handler(IntegrityError)
    def on_integrity_error(request, exc):
        log.info("integrity error on %s %s", request.method, request.path)
        return api.create_response(request, {"detail": "Conflict with an existing object."}, status=409)

    @api.exception_handler(Exception)
    def on_unexpected(request, exc):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return api.create_response(request, {"detail": "Internal server error."}, status=500)
