"""POST /v1/completions (legacy text completions)."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.routing import Route

from gateway.errors import APIError
from gateway.payload import parse_object, require_flag, require_model, take_keep_alive
from gateway.relay import Relay

PATH = b"/v1/completions"


def _valid_prompt(value: object) -> bool:
    if isinstance(value, str):
        return True
    return isinstance(value, list) and bool(value) and (
        all(isinstance(item, str) for item in value)
        or all(isinstance(item, int) for item in value)
        or all(isinstance(item, list) and all(isinstance(t, int) for t in item) for item in value)
    )


async def completions(request: Request) -> Relay:
    body = await request.body()
    data = parse_object(body)
    model = require_model(data)
    if not _valid_prompt(data.get("prompt")):
        raise APIError(400, "'prompt' must be a string, an array of strings, or token arrays",
                       param="prompt")
    n = data.get("n")
    if n is not None and n != 1:
        raise APIError(400, "only n=1 is supported", param="n", code="unsupported_value")
    stream = require_flag(data, "stream")
    keep_alive, changed = take_keep_alive(data)
    if changed:
        body = orjson.dumps(data)
    return Relay.for_request(request, model, PATH, body, stream, keep_alive)


routes = [Route("/v1/completions", completions, methods=["POST"])]
