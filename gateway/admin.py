"""Operator endpoints: GET /api/ps (loaded runners), POST /api/unload {"model": ...}.

``/api/ps`` answers in Ollama's shape (name, size, size_vram, details, expires_at,
context_length) plus what switchboard adds: the node it runs on (every node of the fleet is
listed), mode, pid, variant, slots, in-flight requests, and memory estimated against
measured.
"""

from __future__ import annotations

import datetime as dt

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.errors import service_errors
from gateway.json_response import JSONBytes
from gateway.ollama.local_models import details
from gateway.request_body import parse_object, require_model
from runner.service import ModelFacts, ModelNotFoundError, ModelService, RunnerInfo


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="seconds")


def _describe(info: RunnerInfo, facts: ModelFacts | None) -> dict[str, object]:
    return {
        "name": info.model,
        "model": info.model,
        "node": info.node,
        "gpu": info.gpu,  # the one GPU a copy of a replicated model is pinned to
        "size": info.actual_bytes or info.estimated_bytes,
        "size_vram": info.vram_bytes,
        "digest": facts.digest if facts else "",
        "details": details(facts) if facts else {},
        "context_length": info.ctx_size,
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


async def _facts(service: ModelService, model: str) -> ModelFacts | None:
    try:
        return await service.facts(model)
    except ModelNotFoundError:  # removed from the config or store while it ran
        return None


async def ps(request: Request) -> Response:
    service: ModelService = request.app.state.service
    runners = service.fleet_runners()
    facts = {info.model: await _facts(service, info.model) for info in runners}
    return JSONBytes({"models": [_describe(info, facts[info.model]) for info in runners]})


async def unload(request: Request) -> Response:
    model = require_model(parse_object(await request.body()))
    with service_errors(model):
        was_loaded = await request.app.state.service.unload(model)
    return JSONBytes({"model": model, "unloaded": was_loaded})


routes = [
    Route("/api/ps", ps, methods=["GET"]),
    Route("/api/unload", unload, methods=["POST"]),
]
