"""Who may use the labelling server: every request carries its access token.

The page's address holds the token (``?token=``); the page sends it as an ``X-Token`` header on
its API calls. A request without it is answered 401, one with a wrong token 403, before it
reaches any route. The token is compared in constant time (``hmac.compare_digest``), so its
characters cannot be guessed one at a time from response times.
"""

from __future__ import annotations

import hmac
import json
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["TokenGate"]


class TokenGate:
    """ASGI middleware: lets through only requests that carry the access token.

    The token comes from the ``X-Token`` header or the ``token`` query parameter and is compared
    in constant time.

    Example:
        >>> gate = TokenGate(app=None, token="s3cret")  # wraps the app it guards
        >>> gate.check({"type": "http", "headers": [], "query_string": b"token=s3cret"})
        200
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        if not token:
            raise ValueError("the labelling server needs a non-empty access token")
        self.app = app
        self._token = token.encode()

    def check(self, scope: Scope) -> int:
        """200 for the right token, 401 for none, 403 for a wrong one."""
        given: bytes | None = None
        for name, value in scope.get("headers", []):
            if name == b"x-token":
                given = value
        if given is None:
            values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
            given = values[0].encode() if values else None
        if not given:
            return 401
        return 200 if hmac.compare_digest(given, self._token) else 403

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # the server starting and stopping, not a request
            await self.app(scope, receive, send)
            return
        status = self.check(scope)
        if scope["type"] == "websocket":  # none is served; should one be, it needs the token too
            if status != 200:
                await send({"type": "websocket.close", "code": 1008})
                return
            await self.app(scope, receive, send)
            return
        if status != 200:
            message = (
                "this labelling page needs its access token: open the address the server printed, ?token=... included"
                if status == 401
                else "wrong access token: open the address the server printed (a restarted server has a new token)"
            )
            body = json.dumps({"error": message}).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)
