"""Pagination of every REST list: ninja's limit/offset, with the offset bounded.

ninja's LimitOffsetPagination caps `limit` (NINJA_PAGINATION_MAX_LIMIT) but not `offset`: an offset past the
database's integer range was a 500 on PostgreSQL (and a 409 on SQLite). Here it is a 422 like any bad input.
"""
import binascii
from base64 import urlsafe_b64decode, urlsafe_b64encode
from datetime import datetime
from typing import Any, Optional

from django.conf import settings
from django.db.models import Q
from ninja import Field, Schema
from ninja.errors import HttpError
from ninja.pagination import LimitOffsetPagination, PaginationBase

MAX_OFFSET = 2_147_483_647


class Pagination(LimitOffsetPagination):
    class Input(LimitOffsetPagination.Input):
        offset: int = Field(0, ge=0, le=MAX_OFFSET)


class KeysetPagination(PaginationBase):
    """Newest first by (created_at, id), for lists that grow by millions (the usage ledger).

    `cursor` (the `next_cursor` of the page before) continues after the last record seen: no COUNT, no OFFSET, and
    records written meanwhile never shift a page (no duplicates, no gaps). Without it, limit/offset as Pagination, with
    `count`. The queryset must be ordered by -created_at, -id."""

    class Input(Schema):
        limit: int = Field(settings.NINJA_PAGINATION_PER_PAGE, ge=1, le=settings.NINJA_PAGINATION_MAX_LIMIT)
        offset: int = Field(0, ge=0, le=MAX_OFFSET, description="Ignored with a cursor.")
        cursor: Optional[str] = Field(None, max_length=100, description="The previous page's next_cursor.")

    class Output(Schema):
        items: list[Any]
        count: Optional[int] = Field(None, description="Records matching the filters (offset paging only).")
        next_cursor: Optional[str] = Field(None, description="The next (older) page's cursor; null: the last page.")

    @staticmethod
    def encode(row) -> str:
        return urlsafe_b64encode(f"{row.created_at.isoformat()}|{row.pk}".encode()).decode().rstrip("=")

    @staticmethod
    def decode(cursor: str) -> tuple[datetime, int]:
        try:
            created, pk = urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().split("|")
            moment = datetime.fromisoformat(created)
            if moment.tzinfo is None:
                raise ValueError
            return moment, int(pk)
        except (ValueError, UnicodeDecodeError, binascii.Error):
            raise HttpError(422, "cursor: not a cursor this list gave.") from None

    def paginate_queryset(self, queryset, pagination: Input, request=None, **params):
        limit, count = pagination.limit, None
        if pagination.cursor:
            created, pk = self.decode(pagination.cursor)
            rows = list(queryset.filter(Q(created_at__lt=created) | Q(created_at=created, pk__lt=pk))[:limit + 1])
        else:
            rows = list(queryset[pagination.offset:pagination.offset + limit + 1])
            count = self._items_count(queryset)
        return {"items": rows[:limit], "count": count,
                "next_cursor": self.encode(rows[limit - 1]) if len(rows) > limit else None}
