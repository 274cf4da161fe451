"""One log line per request, its ``x-request-id`` (the client's, or a new one) in and out, and
the ``Date`` header; a ``request`` event for each request that named a model (the console's
"recent requests").

Plain ASGI: streamed bodies pass through untouched.
"""

from __future__ import annotations

import logging
import time
import uuid
from email.utils import formatdate

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.log_escape import escape, escape_quoted
from gateway.log_json import current_request_id
from gateway.metrics import Metrics
from runner.service import EventBus

log = logging.getLogger("switchboard.access")
_ID_HEADER = b"x-request-id"


_date: tuple[int, bytes] = (0, b"")


def http_date() -> bytes:
    """The Date header, formatted once a second (the server's own is turned off: it formats
    one per response)."""
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, formatdate(now, usegmt=True).encode())
    return _date[1]


def _request_id(scope: Scope) -> bytes:
    for name, value in scope["headers"]:
        # Echo a client's id only if it is short and printable: it lands in our log lines.
        if name == _ID_HEADER and 0 < len(value) <= 128 and all(33 <= c < 127 for c in value):
            return bytes(value)
    return uuid.uuid4().hex.encode()


class AccessLog:
    def __init__(self, app: ASGIApp, metrics: Metrics | None = None,
                 events: EventBus | None = None) -> None:
        self.app = app
        self.metrics = metrics
        self.events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0
        request_id = _request_id(scope)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id.decode()
        context = current_request_id.set(state["request_id"])

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (_ID_HEADER, request_id),
                                      (b"date", http_date())]
            await send(message)

        failed = True
        try:
            await self.app(scope, receive, send_with_id)
            failed = False
        finally:
            elapsed = time.perf_counter() - started
            if not status:
                # No response began: a crash (the error middleware answers 500), or the client
                # left first (nginx's 499, "client closed request").
                status = 500 if failed else 499
            if self.metrics is not None:
                route = scope.get("route")
                # Route templates, not raw paths, keep the label set bounded.
                path = getattr(route, "path", "other")
                self.metrics.observe_request(path, status, elapsed,
                                             state.get("served_model", ""))
            model = state.get("model")  # set by the relay
            prompt, completion, rate = state.get("usage") or (None, None, None)
            if self.events is not None and model is not None:
                self.events.publish("request", {
                    "method": scope["method"], "path": scope["path"], "model": model,
                    "status": status, "ms": round(elapsed * 1000, 1),
                    "prompt_tokens": prompt, "completion_tokens": completion,
                    "tokens_per_second": rate, "request_id": state["request_id"],
                })
            client = scope.get("client")
            # Escaped here as well as by the serve formatter: the path is percent-decoded, so
            # "%0a" would forge a line under any other formatter, and '%22 200' would end the
            # quoted request early (issue 18). Printable text comes back as it is, after a scan.
            log.info(
                '%s "%s %s" %d %.1fms id=%s',
                escape(client[0]) if client else "-",
                escape_quoted(scope["method"]),
                escape_quoted(scope["path"]),
                status,
                elapsed * 1000,
                request_id.decode(),
                # What SWITCHBOARD_LOG_FORMAT=json writes as keys (gateway.log_json).
                extra={"event": "request", "request_id": state["request_id"],
                       "method": scope["method"], "path": scope["path"],
                       "client": client[0] if client else None, "model": model,
                       "status": status, "duration_ms": round(elapsed * 1000, 1),
                       "prompt_tokens": prompt, "completion_tokens": completion,
                       "tokens_per_second": rate},
            )
            current_request_id.reset(context)
