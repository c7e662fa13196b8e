"""Opaque page tokens over offsets, shared by every List* call."""

import base64

from ftcommon.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


def page_bounds(page_size: int, page_token: str) -> tuple[int, int]:
    """(offset, limit) for a request; raises InvalidArgument naming the bad field."""
    if page_size < 0:
        raise InvalidArgument("must not be negative", field="page.page_size")
    limit = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    if not page_token:
        return 0, limit
    try:
        offset = int(base64.urlsafe_b64decode(page_token.encode()).decode().removeprefix("o:"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument("is not a token this server issued", field="page.page_token") from exc
    if offset < 0:
        raise InvalidArgument("is not a token this server issued", field="page.page_token")
    return offset, limit


def next_page_token(offset: int, limit: int, returned: int, total: int | None = None) -> str:
    """A token for the next page, or "" when this page was the last."""
    end = offset + returned
    if returned < limit or (total is not None and end >= total):
        return ""
    return base64.urlsafe_b64encode(f"o:{end}".encode()).decode()
