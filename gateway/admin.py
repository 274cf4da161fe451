"""Operator endpoints: GET /api/ps (loaded runners), POST /api/unload {"model": ...}."""

from __future__ import annotations

import datetime as dt

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.errors import APIError
from gateway.payload import parse_object, require_model
from gateway.responses import JSONBytes
from runner.scheduler import ModelNotFoundError, RunnerInfo


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="seconds")


def _describe(info: RunnerInfo) -> dict[str, object]:
    return {
        "model": info.model,
        "mode": info.mode,
        "pid": info.pid,
        "variant": info.variant,
        "ctx_size": info.ctx_size,
        "parallel": info.parallel,
        "in_flight": info.in_flight,
        "draining": info.draining,
        "keep_alive": info.keep_alive if info.keep_alive >= 0 else -1,
        "expires_at": _iso(info.expires_at),
        "load_seconds": round(info.load_seconds, 3),
        "memory": {"estimated_bytes": info.estimated_bytes, "actual_bytes": info.actual_bytes},
    }


async def ps(request: Request) -> Response:
    runners = request.app.state.scheduler.loaded()
    return JSONBytes({"models": [_describe(info) for info in runners]})


async def unload(request: Request) -> Response:
    model = require_model(parse_object(await request.body()))
    try:
        was_loaded = await request.app.state.scheduler.unload(model)
    except ModelNotFoundError as exc:
        raise APIError(404, f"model '{model}' not found", param="model",
                       code="model_not_found") from exc
    return JSONBytes({"model": model, "unloaded": was_loaded})


routes = [
    Route("/api/ps", ps, methods=["GET"]),
    Route("/api/unload", unload, methods=["POST"]),
]
