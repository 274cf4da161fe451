"""Bounds on a request body as it is received (plain ASGI): 413 past ``limit`` bytes, before
they are buffered, and 408 when it is not all in within ``timeout`` seconds.

Without the time bound a client that sent its headers and then a byte a second held its
connection, a task and a file descriptor for as long as it liked: 300 of them made a gateway
with 256 descriptors refuse ``/health``. Hypercorn's own ``read_timeout`` cannot bound this: it
applies to every read of the connection, including while a long answer is generated for a
client with nothing more to say, and would cut those off.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import APIError, dialect_of


def _too_large(limit: int) -> APIError:
    return APIError(413, f"request body is larger than {limit} bytes", code="body_too_large")


def _too_slow(timeout: float) -> APIError:
    return APIError(408, f"request body not received within {timeout:g} s",
                    "invalid_request_error", code="body_timeout")


class BodyLimit:
    def __init__(self, app: ASGIApp, limit: int | None, timeout: float | None = None,
                 exempt: tuple[str, ...] = ("/api/blobs/",)) -> None:
        self.app = app
        self.limit = limit
        self.timeout = timeout or None
        self.exempt = exempt  # uploads a model's size: bounded by their own route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit, timeout = self.limit, self.timeout
        if scope["type"] != "http" or (limit is None and timeout is None) or (
                scope["path"].startswith(self.exempt)):
            await self.app(scope, receive, send)
            return
        if limit is not None:
            for name, value in scope["headers"]:
                if name == b"content-length" and value.isdigit() and int(value) > limit:
                    await _too_large(limit).response(dialect_of(scope["path"]))(
                        scope, receive, send)
                    return
        seen = 0
        # From the request head on: the body has the whole bound, however it is cut up.
        deadline = asyncio.get_running_loop().time() + timeout if timeout else None

        async def bounded() -> Message:
            nonlocal seen, deadline
            if deadline is None:
                message = await receive()
            else:
                try:
                    async with asyncio.timeout_at(deadline):
                        message = await receive()
                except TimeoutError:
                    raise _too_slow(timeout or 0) from None
            if message["type"] == "http.request":
                # Chunked uploads announce no length: count what arrives.
                seen += len(message.get("body", b""))
                if limit is not None and seen > limit:
                    raise _too_large(limit)
                if not message.get("more_body", False):
                    # The body is in: what the app receives next is the client leaving, for
                    # which a relay waits as long as its answer takes.
                    deadline = None
            return message

        await self.app(scope, bounded, send)
