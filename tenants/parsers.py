"""Request-body parsing shared by the REST API (/api/v1) and the OpenAI-compatible API (/v1).

ninja parses every body with json.loads whatever its Content-Type, and answers any failure with one fixed
"400 Cannot parse request body". Here a body must be JSON (Content-Type application/json, a +json type, or
none), at most MAX_JSON_DEPTH levels deep, with numbers that fit in 64 bits (no NaN, Infinity or 1e400: they
are not JSON, and no database column or upstream API takes them). `body_error` turns ninja's 400 into a
message that says what is wrong: 415 for another media type, 400 with the JSON error's position, "nested too
deeply" or "number out of range".
"""
from __future__ import annotations

import json
import math

from ninja.errors import HttpError
from ninja.parser import Parser

MAX_JSON_DEPTH = 64  # arrays/objects within each other; real requests stay far below


class UnsupportedMediaType(Exception):
    pass


class TooDeep(ValueError):
    pass


class NumberOutOfRange(ValueError):
    pass


INT_RANGE = (-(2 ** 63), 2 ** 63 - 1)


def _int(text: str) -> int:
    value = int(text)
    if not INT_RANGE[0] <= value <= INT_RANGE[1]:
        raise NumberOutOfRange(text[:30])
    return value


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NumberOutOfRange(text[:30])
    return value


def _constant(text: str):
    raise NumberOutOfRange(text)  # NaN, Infinity, -Infinity


def _too_deep(value, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


class JsonParser(Parser):
    def parse_body(self, request):
        preparsed = getattr(request, "preparsed_json", None)  # parsed off the event loop (the /v1 lane)
        if preparsed is not None:
            return preparsed
        content_type = request.content_type or ""
        if content_type and content_type != "application/json" and not content_type.endswith("+json"):
            raise UnsupportedMediaType(content_type)
        data = json.loads(request.body, parse_int=_int, parse_float=_float, parse_constant=_constant)
        if _too_deep(data, MAX_JSON_DEPTH):
            raise TooDeep()
        return data


def body_error(exc: HttpError) -> tuple[int, str] | None:
    """(status, message) for ninja's "cannot parse request body" error; None for any other HttpError."""
    cause = exc.__cause__
    if exc.status_code != 400 or cause is None:
        return None
    if isinstance(cause, UnsupportedMediaType):
        return 415, f"Send the body as JSON with Content-Type: application/json (got {str(cause)[:100]})."
    if isinstance(cause, TooDeep):
        return 400, f"The JSON body is nested too deeply (at most {MAX_JSON_DEPTH} levels)."
    if isinstance(cause, NumberOutOfRange):
        return 400, (f"A number in the JSON body is out of range: {cause} (integers must fit in 64 bits, and "
                     "NaN and Infinity are not JSON).")
    if isinstance(cause, RecursionError):
        return 400, "The JSON body is nested too deeply."
    if isinstance(cause, json.JSONDecodeError):
        return 400, f"The body is not valid JSON: {cause.msg} (line {cause.lineno}, column {cause.colno})."
    if isinstance(cause, UnicodeDecodeError):
        return 400, "The body is not valid JSON: it is not UTF-8 text."
    if isinstance(cause, ValueError):  # e.g. an integer literal with thousands of digits
        return 400, "A number in the JSON body is out of range."
    return 400, "The body is not valid JSON."
