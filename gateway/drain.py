"""Graceful shutdown: once draining, new requests get 503 while those in flight finish.

Plain ASGI, outermost but for the access log. On SIGTERM the server keeps listening and answers
every new request (``/health`` included, so load balancers look elsewhere) with a 503
``shutting_down`` and ``Retry-After``, instead of resetting connections; requests already in
flight, streams included, run on until they end or the grace period (``shutdown_grace``)
passes. Only then does the server stop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import APIError, dialect_of

_WATCHERS = frozenset({"/api/events"})


class DrainState:
    """Shared by the middleware and the CLI's signal handling."""

    def __init__(self) -> None:
        self.draining = False
        self.active = 0
        self.on_start: list[Callable[[], None]] = []  # e.g. end the open event streams
        self._idle = asyncio.Event()
        self._idle.set()

    def start(self) -> None:
        self.draining = True
        for callback in self.on_start:
            callback()

    async def wait_idle(self, grace: float) -> bool:
        """True once no request is in flight; False if ``grace`` seconds passed first."""
        try:
            async with asyncio.timeout(grace):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    def enter(self) -> None:
        self.active += 1
        self._idle.clear()

    def leave(self) -> None:
        self.active -= 1
        if self.active == 0:
            self._idle.set()


class Drain:
    def __init__(self, app: ASGIApp, state: DrainState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.state.draining:
            error = APIError(503, "switchboard is shutting down; retry another instance",
                             code="shutting_down",
                             headers={"Retry-After": "1", "Connection": "close"})
            await error.response(dialect_of(scope["path"]))(scope, receive, send)
            return
        if scope["path"] in _WATCHERS:
            # Open until the client leaves or the drain ends it (on_start): counting it would
            # hold every shutdown for the whole grace period while a console is open.
            await self.app(scope, receive, send)
            return
        self.state.enter()
        try:
            await self.app(scope, receive, send)
        finally:
            self.state.leave()
