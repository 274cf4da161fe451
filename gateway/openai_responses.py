"""POST /v1/responses and /v1/responses/input_tokens: OpenAI's Responses API, relayed to the
runner (llama-server implements both, including the typed event stream).

llama-server's stream events leave out ``sequence_number``, ``output_index`` and
``content_index``, which the OpenAI SDK's ``responses.stream()`` needs to assemble the answer
(it fails with a TypeError without them); :class:`ResponseEvents` fills them in.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.routing import Route

from gateway.errors import APIError, Dialect, stream_error_event
from gateway.relay import Relay
from gateway.request_body import read_request, require_flag
from runner.service import Lease

PATH = b"/v1/responses"
TOKENS_PATH = b"/v1/responses/input_tokens"


class ResponseEvents:
    """Completes each event of a Responses stream with the indexes clients rely on."""

    media_type = b"text/event-stream"

    def __init__(self) -> None:
        self.sequence = 0
        self.outputs: dict[str, int] = {}  # item id -> output_index
        self.parts: dict[str, int] = {}  # item id -> content_index of its latest part
        self.requested = ""
        self.canonical = ""

    def begin(self, lease: Lease, waited: float) -> None:
        self.requested, self.canonical = lease.requested, lease.model

    def whole(self, body: bytes) -> bytes:  # streams only
        return body

    def _complete(self, event: dict[str, Any]) -> None:
        event.setdefault("sequence_number", self.sequence)
        self.sequence += 1
        kind = str(event.get("type", ""))
        item = event.get("item")
        item_id = item.get("id") if isinstance(item, dict) else event.get("item_id")
        if kind == "response.output_item.added" and isinstance(item_id, str):
            self.outputs.setdefault(item_id, len(self.outputs))
        if isinstance(item_id, str) and item_id in self.outputs:
            event.setdefault("output_index", self.outputs[item_id])
            if kind == "response.content_part.added":
                self.parts[item_id] = self.parts.get(item_id, -1) + 1
            if "part" in event or "text" in kind or "content_part" in kind:
                event.setdefault("content_index", self.parts.get(item_id, 0))
        response = event.get("response")
        if isinstance(response, dict) and response.get("model") == self.canonical:
            response["model"] = self.requested

    def event(self, data: bytes) -> bytes:
        event = orjson.loads(data)
        if isinstance(event, dict) and "error" not in event:
            self._complete(event)
            name = str(event.get("type", "message")).encode()
            return b"event: " + name + b"\ndata: " + orjson.dumps(event) + b"\n\n"
        return b"data: " + data + b"\n\n"

    def end(self) -> bytes:
        return b""  # the Responses API ends with response.completed, not [DONE]

    def failed(self, message: str) -> bytes:
        return stream_error_event(Dialect.OPENAI, message)


def _require_input(data: dict[str, object]) -> None:
    value = data.get("input")
    if not isinstance(value, str | list) or not value:
        raise APIError(400, "'input' must be a non-empty string or array of input items",
                       param="input")


async def responses(request: Request) -> Relay:
    body, data = await read_request(request)
    _require_input(data)
    stream = require_flag(data, "stream")
    return Relay.for_request(request, body, data, PATH, stream,
                             translation=ResponseEvents() if stream else None)


async def input_tokens(request: Request) -> Relay:
    body, data = await read_request(request)
    _require_input(data)
    return Relay.for_request(request, body, data, TOKENS_PATH, False)


routes = [
    Route("/v1/responses", responses, methods=["POST"]),
    Route("/v1/responses/input_tokens", input_tokens, methods=["POST"]),
]
