"""POST /v1/chat/completions."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.routing import Route

from gateway.errors import APIError
from gateway.payload import parse_object, require_flag, require_model, take_keep_alive
from gateway.relay import Relay

PATH = b"/v1/chat/completions"


async def chat_completions(request: Request) -> Relay:
    body = await request.body()
    data = parse_object(body)
    model = require_model(data)
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty array", param="messages")
    stream = require_flag(data, "stream")
    keep_alive, present = take_keep_alive(data)
    if present:
        body = orjson.dumps(data)
    state = request.app.state
    return Relay(state.scheduler, state.upstream, model, PATH, body, stream, keep_alive)


routes = [Route("/v1/chat/completions", chat_completions, methods=["POST"])]
