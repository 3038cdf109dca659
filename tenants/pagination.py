"""Pagination of every REST list: ninja's limit/offset, with the offset bounded.

ninja's LimitOffsetPagination caps `limit` (NINJA_PAGINATION_MAX_LIMIT) but not `offset`: an offset past the
database's integer range was a 500 on PostgreSQL (and a 409 on SQLite). Here it is a 422 like any bad input.
"""
from ninja import Field
from ninja.pagination import LimitOffsetPagination

MAX_OFFSET = 2_147_483_647


class Pagination(LimitOffsetPagination):
    class Input(LimitOffsetPagination.Input):
        offset: int = Field(0, ge=0, le=MAX_OFFSET)
