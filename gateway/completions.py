"""POST /v1/completions (legacy text completions)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Route

from gateway.errors import APIError
from gateway.relay import Relay
from gateway.request_body import (
    is_text_or_tokens,
    read_request,
    require_flag,
    require_single_choice,
)

PATH = b"/v1/completions"


async def completions(request: Request) -> Relay:
    body, data = await read_request(request)
    if not is_text_or_tokens(data.get("prompt")):
        raise APIError(400, "'prompt' must be a string, an array of strings, or token arrays",
                       param="prompt")
    require_single_choice(data)
    stream = require_flag(data, "stream")
    return Relay.for_request(request, body, data, PATH, stream)


routes = [Route("/v1/completions", completions, methods=["POST"])]
