"""GET /api/events: switchboard's state as server-sent events, for the operator console.

The stream opens with a ``snapshot`` (runners, queue depth, recent requests, models, and the
chosen runner's recent output with ``?logs=RUNNER``), then carries the event bus's events
(:mod:`runner.events`) as they happen, in batches written at most every ``LINGER`` (a
console watching a busy gateway costs it a few writes a second, not one per request), with a
keep-alive comment every ``SWITCHBOARD_EVENTS_PING``. Each subscriber reads from its own
bounded buffer, so a slow one loses its oldest events (and is told how many) instead of
slowing anyone down; one that stops reading altogether is dropped after ``SEND_TIMEOUT``.

While anyone is subscribed, a sampler publishes ``memory`` every ``SWITCHBOARD_EVENTS_SAMPLE``
seconds: RAM, each GPU's free memory, and each runner's measured memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from runner.service import Event, EventBus, ModelService, RunnerInfo

log = logging.getLogger(__name__)
SEND_TIMEOUT = 30.0  # seconds a send may block before the subscriber is given up on


def _runner(info: RunnerInfo) -> dict[str, Any]:
    return {
        "runner": info.runner, "model": info.model, "mode": info.mode,
        "state": "stopping" if info.draining else "ready", "pid": info.pid,
        "variant": info.variant, "load_seconds": round(info.load_seconds, 3),
        "ctx_size": info.ctx_size, "in_flight": info.in_flight,
        "estimated_bytes": info.estimated_bytes, "actual_bytes": info.actual_bytes,
        "vram_bytes": info.vram_bytes, **_expiry(info),
    }


def _expiry(info: RunnerInfo) -> dict[str, Any]:
    return {"expires_at": info.expires_at, "keep_alive": info.keep_alive}


async def catalog(service: ModelService) -> list[dict[str, Any]]:
    """Every model clients may name, loaded or not, with the context its runner starts with."""
    return [{"name": facts.name, "context": facts.runner_context, "size": facts.size,
             "modes": sorted(str(mode) for mode in facts.config.modes), "problem": facts.problem}
            for facts in await service.all_facts()]


def snapshot(service: ModelService, logs: str | None,
             models: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    runners = [_runner(info) for info in service.loaded()]
    runners += [{"runner": s.runner, "model": s.model, "mode": s.mode, "state": "starting",
                 "pid": s.pid, "variant": s.variant, "estimated_bytes": s.estimated_bytes}
                for s in service.starting()]
    return {
        "runners": runners,
        "queue": service.queue_depth,
        "requests": [{"data": e.data, "at": e.at} for e in service.events.recent_requests],
        "models": service.names(),
        "catalog": models or [],
        "logs": service.runner_output(logs) if logs else [],
    }


class MemorySampler:
    """Publishes ``memory`` while the bus has subscribers; one task at most."""

    def __init__(self, service: ModelService, interval: float) -> None:
        self._bus = service.events
        self._service = service
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> dict[str, Any]:
        memory = self._service.memory()
        return {
            "ram": {"total": memory.ram_total, "available": memory.ram_available},
            "gpus": [{"index": g.index, "name": g.name, "total": g.total, "free": g.free}
                     for g in memory.gpus],
            "runners": [{"runner": i.runner, "model": i.model, "mode": i.mode,
                         "actual_bytes": i.actual_bytes, "vram_bytes": i.vram_bytes,
                         "in_flight": i.in_flight, **_expiry(i)}
                        for i in self._service.loaded()],
        }

    def ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while self._bus.watched:
            self._bus.publish("memory", self.sample())
            await asyncio.sleep(self._interval)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


LINGER = 0.1  # seconds a batch of events gathers before it is written


def _sse(kind: str, data: Any, at: float) -> bytes:
    # orjson writes no newline, so one data line holds the whole event.
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"data": data, "at": at}) \
        + b"\n\n"


async def events(request: Request) -> Response:
    state = request.app.state
    bus: EventBus = state.service.events
    logs = request.query_params.get("logs") or None
    models = await catalog(state.service)  # before subscribing: nothing to close if it fails
    subscription = bus.subscribe(logs=logs)
    state.sampler.ensure_running()
    first = snapshot(state.service, logs, models)

    async def stream() -> AsyncIterator[bytes]:
        try:
            yield _sse("snapshot", first, time.time())
            batch: list[Event]
            async for batch in bus.stream(subscription, LINGER):
                yield b"".join(_sse(event.kind, event.data, event.at) for event in batch)
        finally:
            subscription.close()

    return EventSourceResponse(stream(), ping=state.settings.events_ping, sep="\n",
                               send_timeout=SEND_TIMEOUT)


routes = [Route("/api/events", events, methods=["GET"])]
