"""One JSON error shape for the REST API: {"detail": <message or list of field errors>}.

Besides the handlers' own errors, three come from the framework for every operation with a JSON body,
whatever the handler: 400 when the body is not JSON (or too deep, or holds a number out of range), 413 when
it is larger than DATA_UPLOAD_MAX_MEMORY_SIZE, 415 when its Content-Type is not JSON (tenants.parsers).
`document_common_errors` adds them to the OpenAPI schema, so that it names every status an operation can
answer.
"""
from __future__ import annotations

import logging

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, ValidationError
from django.db import IntegrityError
from ninja.errors import HttpError

from credentials.crypto import DecryptionError
from credentials.provider_rules import UnknownProviderType
from credentials.resolution import CredentialError
from providers.selectors import Forbidden, NotFound
from providers.services import Conflict
from tenants.parsers import body_error

log = logging.getLogger("eneo.api")


def validation_error_detail(exc: ValidationError, loc_prefix: str = "body") -> list[dict]:
    if hasattr(exc, "error_dict"):
        return [
            {"loc": [loc_prefix, field], "msg": " ".join(str(m) for m in messages), "type": "value_error"}
            for field, messages in exc.message_dict.items()
        ]
    return [{"loc": [loc_prefix], "msg": " ".join(exc.messages), "type": "value_error"}]


ERROR_SCHEMA = {"$ref": "#/components/schemas/ErrorOut"}
BODY_ERRORS = {
    400: "The body is not valid JSON, is nested too deeply or holds a number out of range.",
    413: "The body is larger than the server accepts (MAX_REQUEST_BODY_BYTES).",
    415: "The body is not sent as JSON (Content-Type: application/json).",
}


def too_large_message() -> str:
    return f"The request body is too large: at most {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes."


def document_common_errors(schema: dict) -> dict:
    """Add the framework's errors (BODY_ERRORS) to every operation of an OpenAPI schema that takes a body."""
    for item in schema.get("paths", {}).values():
        for operation in item.values():
            if not isinstance(operation, dict) or "requestBody" not in operation:
                continue
            responses = operation.setdefault("responses", {})
            for status, description in BODY_ERRORS.items():
                responses.setdefault(status, {"description": description,
                                              "content": {"application/json": {"schema": ERROR_SCHEMA}}})
    return schema


def install(api):
    @api.exception_handler(HttpError)
    def on_http_error(request, exc):
        status, message = body_error(exc) or (exc.status_code, str(exc))
        return api.create_response(request, {"detail": message}, status=status)

    @api.exception_handler(RequestDataTooBig)
    def on_too_large(request, exc):
        return api.create_response(request, {"detail": too_large_message()}, status=413)

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
