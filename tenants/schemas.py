"""ninja schemas of the sysadmin tenant API-key routes. Out schemas never carry a key's secret or digest."""
from __future__ import annotations

from datetime import datetime
from datetime import timezone as dt_timezone
from typing import Annotated, Optional, Union
from uuid import UUID

from django.utils import timezone
from ninja import Field, Schema
from pydantic import AfterValidator, AwareDatetime, ConfigDict, StringConstraints, field_validator

def has_nul(value) -> bool:
    """Whether a NUL character is in a string anywhere in `value` (dict keys and nested values included).
    PostgreSQL cannot store one in text, and no legitimate input needs it."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return False


class NoNulIn(Schema):
    """Base of request bodies: a NUL character in any string, nested ones included, is a 422."""

    @field_validator("*")
    @classmethod
    def _no_nul(cls, value):
        if has_nul(value):
            raise ValueError("NUL characters are not allowed.")
        return value


def as_utc(value: Optional[datetime]) -> Optional[datetime]:
    """Any offset ISO 8601 allows (up to +-23:59; PostgreSQL takes +-15:59) as the same instant in UTC; naive = UTC."""
    if value is None:
        return None
    try:
        return value.replace(tzinfo=dt_timezone.utc) if value.tzinfo is None else value.astimezone(dt_timezone.utc)
    except OverflowError:
        raise ValueError("Out of range once converted to UTC.") from None


UtcDatetime = Annotated[datetime, AfterValidator(as_utc)]


ScopeName = Annotated[str, StringConstraints(pattern=r"^(\*|[A-Za-z][A-Za-z0-9]*:[A-Za-z][A-Za-z0-9]*)$",
                                             max_length=100)]


class ApiKeyIn(Schema):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, max_length=100, pattern=r"^[^\x00]*$",
                      description="What the key is for, e.g. 'intranet chatbot'.")
    scopes: list[ScopeName] = Field(default_factory=list, max_length=100,
                                    description="e.g. aiProviders:ListAiProviders; '*' grants every scope.")
    expires_at: Optional[Annotated[AwareDatetime, AfterValidator(as_utc)]] = Field(
        None, description="With a time zone; null = never expires.")

    @field_validator("expires_at")
    @classmethod
    def _in_future(cls, value):
        if value is not None and value <= timezone.now():
            raise ValueError("Must be in the future.")
        return value


class ApiKeyOut(Schema):
    id: int
    tenant_id: UUID
    name: str
    prefix: str = Field(..., description="Public part of the key (eneo_<prefix>_...); identifies it in logs.")
    scopes: list[str]
    is_active: bool = Field(..., description="false = revoked.")
    expires_at: Optional[datetime]
    created_at: datetime
    last_used_at: Optional[datetime]


class ApiKeyCreatedOut(ApiKeyOut):
    api_key: str = Field(..., description="The full key. Shown only in this response: store it now.")
    message: str


class FieldErrorOut(Schema):
    loc: list[Union[str, int]] = Field(..., description="Where: e.g. ['body', 'name'] or ['query', 'limit'].")
    msg: str
    type: str


class ErrorOut(Schema):
    """The REST API's one error shape (eneo_site/exceptions.py)."""

    detail: Union[str, list[FieldErrorOut]] = Field(..., description="A message, or a list of field errors.")
    code: Optional[str] = Field(None, description="Credential errors: a machine-readable reason.")
