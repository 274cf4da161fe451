"""POST /v1/chat/completions."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.routing import Route

from gateway.errors import APIError
from gateway.payload import (
    parse_object,
    require_flag,
    require_model,
    require_single_choice,
    take_keep_alive,
)
from gateway.relay import Relay

PATH = b"/v1/chat/completions"


async def chat_completions(request: Request) -> Relay:
    body = await request.body()
    data = parse_object(body)
    model = require_model(data)
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty array", param="messages")
    require_single_choice(data)
    stream = require_flag(data, "stream")
    keep_alive, changed = take_keep_alive(data)
    if "max_completion_tokens" in data:
        # OpenAI's newer name; llama-server reads max_tokens.
        data.setdefault("max_tokens", data.pop("max_completion_tokens"))
        changed = True
    if changed:
        body = orjson.dumps(data)
    return Relay.for_request(request, model, PATH, body, stream, keep_alive)


routes = [Route("/v1/chat/completions", chat_completions, methods=["POST"])]
