"""POST /v1/completions (legacy text completions)."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.routing import Route

from gateway.errors import APIError
from gateway.payload import (
    is_text_or_tokens,
    parse_object,
    require_flag,
    require_model,
    require_single_choice,
    take_keep_alive,
)
from gateway.relay import Relay

PATH = b"/v1/completions"


async def completions(request: Request) -> Relay:
    body = await request.body()
    data = parse_object(body)
    model = require_model(data)
    if not is_text_or_tokens(data.get("prompt")):
        raise APIError(400, "'prompt' must be a string, an array of strings, or token arrays",
                       param="prompt")
    require_single_choice(data)
    stream = require_flag(data, "stream")
    keep_alive, changed = take_keep_alive(data)
    if changed:
        body = orjson.dumps(data)
    return Relay.for_request(request, model, PATH, body, stream, keep_alive)


routes = [Route("/v1/completions", completions, methods=["POST"])]
