"""POST /v1/embeddings, served by the model's embeddings-mode runner."""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Route

from gateway.errors import APIError
from gateway.relay import Relay
from gateway.request_body import is_text_or_tokens, read_request
from runner.service import RunnerMode, RunnerOptions

PATH = b"/v1/embeddings"
_EMBEDDINGS = RunnerOptions(mode=RunnerMode.EMBEDDINGS)


async def embeddings(request: Request) -> Relay:
    body, data = await read_request(request)
    if not is_text_or_tokens(data.get("input")):
        raise APIError(400, "'input' must be a string, an array of strings, or token arrays",
                       param="input")
    return Relay.for_request(request, body, data, PATH, False, options=_EMBEDDINGS)


routes = [Route("/v1/embeddings", embeddings, methods=["POST"])]
