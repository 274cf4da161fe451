"""POST /api/pull: fetch a model into the store, streaming Ollama's NDJSON progress objects.

Body: ``{"model": NAME, "insecure": false, "stream": true}`` (Ollama's ``name`` works too), or
``{"url": "https://…/file.gguf", "sha256": HEX, "model": NAME?}``. Streamed, each line is
``{"status", "digest"?, "total"?, "completed"?}`` ending in ``{"status": "success"}`` or
``{"error": …}``; unstreamed, one object once it is done (errors as OpenAI-shaped bodies).
Pulls of one blob share one download; a client that leaves stops waiting, and the download
stops when nobody waits (the partial stays for the next pull).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from gateway.errors import APIError, service_errors
from gateway.json_response import JSONBytes
from gateway.request_body import parse_object, require_flag
from runner.service import EventBus, ModelService, PullError, PullEvent, PullJob

log = logging.getLogger(__name__)
_DONE = object()


def _job(service: ModelService, data: dict[str, object]) -> PullJob:
    """The pull the body asks for, checked before any response starts."""
    model = data.get("model", data.get("name"))
    url = data.get("url")
    if url is not None:
        sha256 = data.get("sha256")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise APIError(400, "'url' must be an http(s) URL", param="url")
        if not isinstance(sha256, str):
            raise APIError(400, "'sha256' is required with 'url'", param="sha256")
        if model is not None and not isinstance(model, str):
            raise APIError(400, "'model' must be a string", param="model")
        with service_errors(model):
            return service.pull(model, url=url, sha256=sha256)
    if not isinstance(model, str) or not model:
        raise APIError(400, "'model' is required and must be a non-empty string", param="model")
    insecure = require_flag(data, "insecure")
    with service_errors(model):
        return service.pull(model, insecure=insecure)


class _Announce:
    """Pull progress as ``pull`` events for the console: every change of status, and progress
    at most four times a second (a download reports every chunk)."""

    def __init__(self, bus: EventBus, name: str) -> None:
        self._bus = bus
        self._name = name
        self._status = ""
        self._last = 0.0

    def __call__(self, event: PullEvent | dict[str, object]) -> None:
        body = event.to_dict() if isinstance(event, PullEvent) else event
        now = time.monotonic()
        status = str(body.get("status", "error"))
        if status != self._status or now - self._last >= 0.25 or "error" in body:
            self._status, self._last = status, now
            if self._bus.watched:
                self._bus.publish("pull", {"model": self._name, **body})


async def pull(request: Request) -> Response:
    data = parse_object(await request.body())
    service: ModelService = request.app.state.service
    job = _job(service, data)
    announce = _Announce(service.events, str(data.get("model", data.get("url"))))
    if data.get("stream") is False:
        try:
            await job(announce)
        except PullError as exc:
            announce({"error": str(exc)})
            raise APIError(exc.status, str(exc), param="model") from exc
        return JSONBytes({"status": "success"})
    return StreamingResponse(progress_stream(job, announce), media_type="application/x-ndjson")


async def progress_stream(job: Callable[[Any], Awaitable[object]],
                          announce: Callable[[Any], None], what: str = "pull",
                          expected: tuple[type[Exception], ...] = (PullError,)
                          ) -> AsyncIterator[bytes]:
    """``job``'s progress objects as NDJSON lines, its refusal (``expected``) as the last
    one; Ollama streams /api/pull and /api/create so."""
    queue: asyncio.Queue[PullEvent | object] = asyncio.Queue()

    def emit(event: PullEvent | dict[str, object]) -> None:
        queue.put_nowait(event)
        announce(event)

    async def run() -> None:
        try:
            await job(emit)
        except expected as exc:
            queue.put_nowait({"error": str(exc)})
            announce({"error": str(exc)})
        except Exception as exc:  # the stream has started: the error must travel in it
            log.exception("%s failed", what)
            queue.put_nowait({"error": f"{what} failed: {exc}"})
        finally:
            queue.put_nowait(_DONE)

    task = asyncio.create_task(run())
    try:
        while (item := await queue.get()) is not _DONE:
            body = item.to_dict() if isinstance(item, PullEvent) else item
            yield orjson.dumps(body) + b"\n"
    finally:
        # The client left (or we are done): stop waiting; the download stops with its last
        # waiter and keeps its partial.
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


routes = [Route("/api/pull", pull, methods=["POST"])]
