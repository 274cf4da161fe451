"""POST /v1/messages and /v1/messages/count_tokens: Anthropic's Messages API, relayed to the
runner (llama-server speaks it, with its SSE event types). Errors here are Anthropic-shaped
(:class:`gateway.errors.Dialect`), and the SDK's ``x-api-key`` header is accepted as a key."""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Route

from gateway.errors import APIError
from gateway.relay import Relay
from gateway.request_body import read_request, require_flag

PATH = b"/v1/messages"
COUNT_PATH = b"/v1/messages/count_tokens"


def _require_messages(data: dict[str, object]) -> None:
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty array", param="messages")


async def messages(request: Request) -> Relay:
    body, data = await read_request(request)
    _require_messages(data)
    max_tokens = data.get("max_tokens")
    # Anthropic requires it; llama-server would otherwise generate up to the context's end.
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise APIError(400, "'max_tokens' is required and must be a positive integer",
                       param="max_tokens")
    stream = require_flag(data, "stream")
    return Relay.for_request(request, body, data, PATH, stream)


async def count_tokens(request: Request) -> Relay:
    body, data = await read_request(request)
    _require_messages(data)
    return Relay.for_request(request, body, data, COUNT_PATH, False)


routes = [
    Route("/v1/messages", messages, methods=["POST"]),
    Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
]
