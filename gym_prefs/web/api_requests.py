"""What the labelling server reads from a request: a JSON body of bounded size, checked fields.

Every check raises :class:`ApiError` with the HTTP status and a message that names the fix,
before anything is written.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from starlette.requests import Request

__all__ = ["MAX_BODY", "MAX_NAME", "ApiError", "field", "holder_of", "json_body", "person_of"]

#: The largest request body accepted (an answer is about 150 bytes).
MAX_BODY = 16 * 1024
#: Longest person name kept (longer ones are cut).
MAX_NAME = 64


class ApiError(Exception):
    """A refused request: its HTTP status and a message that says what to do instead.

    Example:
        >>> ApiError(409, "answered already").status
        409
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object, read at most :data:`MAX_BODY` bytes far."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
        raise ApiError(413, f"request body of {declared} bytes is over the limit of {MAX_BODY}; send one answer a call")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise ApiError(413, f"request body is over the limit of {MAX_BODY} bytes; send one answer a call")
    try:
        value = json.loads(bytes(body))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ApiError(400, f"the request body is not JSON ({error}); send a JSON object") from None
    if not isinstance(value, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(value).__name__}")
    return value


def field(body: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    """``body[name]`` checked to be of ``kind`` (a bool is no int); ``default`` when absent, 400 if none.

    Example:
        >>> field({"slot": 1}, "slot", int), field({}, "page", str, "")
        (1, '')
    """
    value = body.get(name, default)
    if value is ...:
        raise ApiError(400, f"the request lacks {name!r}; see the page's app.js for the fields each call sends")
    if value is not default and (not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool)):
        raise ApiError(400, f"{name!r} must be {getattr(kind, '__name__', kind)}, got {value!r}")
    return value


def person_of(body: dict[str, Any], default: str) -> str:
    """The person's name (at most :data:`MAX_NAME` characters), ``default`` when none is given."""
    person = field(body, "person", str, default).strip()[:MAX_NAME]
    return person or default


def holder_of(body: dict[str, Any], person: str) -> str:
    """Who holds a lease: one of a page's two slots.

    Example:
        >>> holder_of({"page": "a1", "slot": 1}, "ann")
        'ann|a1|1'
    """
    # A page holds up to two leases (the pair shown and the one fetched ahead), one a slot; the
    # page id keeps two tabs of one person apart.
    page = field(body, "page", str, "")[:MAX_NAME]
    slot = field(body, "slot", int, 0)
    if slot not in (0, 1):
        raise ApiError(400, f"'slot' must be 0 or 1, got {slot!r}")
    return f"{person}|{page}|{slot}"
