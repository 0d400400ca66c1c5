"""Pages of jobs, newest first, and the opaque cursor that says where the next page starts.

The cursor is a position, (created_at, id) of the last job shown, not a count: a forged or
stale cursor can only start a page elsewhere, and a page costs the same however deep it is.
"""

from __future__ import annotations

import base64
import re
import uuid
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel

from db.listing import PagePosition
from producer.contract import JobView
from producer.errors import InvalidJobError

MAX_PAGE = 200
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CURSOR = re.compile(r"1\.(\d{1,18})\.([0-9a-f]{32})")
_MAX_CURSOR_CHARS = 80
_NOT_A_CURSOR = "is not a cursor this API returned (pass next_cursor as given)"


class JobPage(BaseModel):
    """One page of jobs, newest first; pass `next_cursor` as `cursor` for the next page (None: the last page)."""

    jobs: list[JobView]
    next_cursor: str | None = None


def encode_cursor(position: PagePosition) -> str:
    micros = (position.created_at - _EPOCH) // timedelta(microseconds=1)
    return base64.urlsafe_b64encode(f"1.{micros}.{position.id.hex}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> PagePosition:
    """The position a cursor names; InvalidJobError (field `cursor`) for anything `encode_cursor` did not make."""
    if len(cursor) > _MAX_CURSOR_CHARS:
        raise InvalidJobError.single("cursor", _NOT_A_CURSOR)
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        match = _CURSOR.fullmatch(text)
        if match is None:
            raise ValueError(text)
        return PagePosition(_EPOCH + timedelta(microseconds=int(match[1])), uuid.UUID(hex=match[2]))
    except (ValueError, OverflowError):  # binascii.Error and UnicodeDecodeError are ValueErrors
        raise InvalidJobError.single("cursor", _NOT_A_CURSOR) from None


__all__ = ["MAX_PAGE", "JobPage", "decode_cursor", "encode_cursor"]
