"""GET /v1/models and /v1/models/{id}: the models clients may name."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.errors import model_not_found
from gateway.json_response import JSONBytes

_CREATED = int(time.time())


def _entry(name: str) -> dict[str, object]:
    return {"id": name, "object": "model", "created": _CREATED, "owned_by": "switchboard"}


async def list_models(request: Request) -> Response:
    names = request.app.state.service.names()
    return JSONBytes({"object": "list", "data": [_entry(name) for name in names]})


async def get_model(request: Request) -> Response:
    name = request.path_params["model"]
    if request.app.state.service.canonical(name) is None:
        raise model_not_found(name)
    return JSONBytes(_entry(name))


routes = [
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model:path}", get_model, methods=["GET"]),
]
