"""llama.cpp's own routes, routed by a ``model`` field: POST /tokenize, /detokenize and
/apply-template. Each goes to the model's primary runner (chat, or an embeddings- or
reranking-only model's one runner), since any runner can tokenize."""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Route

from gateway.errors import APIError
from gateway.relay import Relay
from gateway.request_body import read_request
from runner.service import RunnerOptions

_PRIMARY = RunnerOptions(mode=None)


def _route(path: str, field: str, check: type | tuple[type, ...], what: str) -> Route:
    upstream = path.encode()

    async def endpoint(request: Request) -> Relay:
        body, data = await read_request(request)
        if not isinstance(data.get(field), check):
            raise APIError(400, f"'{field}' must be {what}", param=field)
        return Relay.for_request(request, body, data, upstream, False,
                                 options=_PRIMARY)

    return Route(path, endpoint, methods=["POST"])


routes = [
    _route("/tokenize", "content", (str, list), "a string (or an array of strings and tokens)"),
    _route("/detokenize", "tokens", list, "an array of token ids"),
    _route("/apply-template", "messages", list, "an array of chat messages"),
]
