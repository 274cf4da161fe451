"""POST /v1/chat/completions."""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Route

from gateway.errors import APIError
from gateway.relay import Relay
from gateway.request_body import read_request, require_flag, require_single_choice

PATH = b"/v1/chat/completions"


async def chat_completions(request: Request) -> Relay:
    body, data = await read_request(request)
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty array", param="messages")
    require_single_choice(data)
    stream = require_flag(data, "stream")
    edited = "max_completion_tokens" in data
    if edited:
        # OpenAI's newer name; llama-server reads max_tokens.
        data.setdefault("max_tokens", data.pop("max_completion_tokens"))
    return Relay.for_request(request, body, data, PATH, stream, edited)


routes = [Route("/v1/chat/completions", chat_completions, methods=["POST"])]
