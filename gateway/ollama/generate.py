"""POST /api/chat and /api/generate: Ollama's generation API over the runner's OpenAI one.

The request becomes a chat completion (``/api/generate`` with ``raw`` a text completion), and
the answer is translated back: one JSON object, or NDJSON lines (Ollama streams unless told
``"stream": false``), each with the model and ``created_at``, ending in a ``done`` line with
Ollama's counters (durations in nanoseconds, from llama-server's timings). Tool calls, which
OpenAI streams as argument fragments, arrive as one Ollama message with parsed arguments.

As in Ollama, a request with no prompt (no messages) only loads the model, and with
``keep_alive: 0`` unloads it.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import deque
from typing import Any, Literal

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.errors import APIError, service_errors
from gateway.json_response import JSONBytes
from gateway.ollama.options import read_options, response_format, runner_options, sampling_fields
from gateway.relay import Relay
from gateway.request_body import parse_object, require_model, take_keep_alive
from runner.service import Lease, ModelNotFoundError, ModelService

log = logging.getLogger(__name__)

CHAT_PATH = b"/v1/chat/completions"
COMPLETIONS_PATH = b"/v1/completions"
Kind = Literal["chat", "generate", "raw"]
_DONE_REASON = {"stop": "stop", "length": "length", "tool_calls": "stop"}


def now() -> str:
    """Ollama's ``created_at``: RFC 3339 in UTC."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def _ms_ns(value: object) -> int:
    return int(value * 1e6) if isinstance(value, int | float) else 0


def _arguments(raw: str) -> dict[str, Any]:
    try:
        parsed = orjson.loads(raw or "{}")
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        log.warning("tool call arguments are not a JSON object: %.200s", raw)
        return {}
    return parsed


class Generation:
    """The runner's OpenAI answer as Ollama's, for one request (see gateway.relay)."""

    media_type = b"application/x-ndjson"

    def __init__(self, model: str, kind: Kind) -> None:
        self.model = model  # the name the client sent
        self.kind = kind
        self.started = time.perf_counter()
        self.waited = 0.0
        self.finish: str | None = None
        self.usage: dict[str, Any] = {}
        self.timings: dict[str, Any] = {}
        self.calls: dict[int, dict[str, str]] = {}
        self.errored = False

    def begin(self, lease: Lease, waited: float) -> None:
        self.waited = waited

    def _piece(self, content: str, thinking: str | None = None,
               calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        if self.kind == "chat":
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if thinking:
                message["thinking"] = thinking
            if calls:
                message["tool_calls"] = calls
            return {"message": message}
        piece: dict[str, Any] = {"response": content}
        if thinking:
            piece["thinking"] = thinking
        return piece

    def _counters(self) -> dict[str, Any]:
        usage, timings = self.usage, self.timings
        return {
            "done": True,
            "done_reason": _DONE_REASON.get(self.finish or "stop", "stop"),
            "total_duration": _ns(time.perf_counter() - self.started),
            "load_duration": _ns(self.waited),
            "prompt_eval_count": usage.get("prompt_tokens", timings.get("prompt_n", 0)),
            "prompt_eval_duration": _ms_ns(timings.get("prompt_ms")),
            "eval_count": usage.get("completion_tokens", timings.get("predicted_n", 0)),
            "eval_duration": _ms_ns(timings.get("predicted_ms")),
        }

    def _line(self, fields: dict[str, Any]) -> bytes:
        return orjson.dumps({"model": self.model, "created_at": now(), **fields}) + b"\n"

    def _stats(self, data: dict[str, Any]) -> None:
        if isinstance(usage := data.get("usage"), dict):
            self.usage = usage
        if isinstance(timings := data.get("timings"), dict):
            self.timings = timings

    def whole(self, body: bytes) -> bytes:
        data = orjson.loads(body)
        self._stats(data)
        choice = (data.get("choices") or [{}])[0]
        self.finish = choice.get("finish_reason")
        if self.kind == "raw":
            piece = self._piece(choice.get("text") or "")
        else:
            message = choice.get("message") or {}
            calls = [{"function": {"name": call["function"]["name"],
                                   "arguments": _arguments(call["function"].get("arguments", ""))}}
                     for call in message.get("tool_calls") or []]
            piece = self._piece(message.get("content") or "", message.get("reasoning_content"),
                                calls)
        return orjson.dumps({"model": self.model, "created_at": now(), **piece,
                             **self._counters()})

    def event(self, data: bytes) -> bytes:
        chunk = orjson.loads(data)
        if not isinstance(chunk, dict):
            return b""
        if "error" in chunk:
            self.errored = True
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else error
            return orjson.dumps({"error": str(message)}) + b"\n"
        self._stats(chunk)
        out = []
        for choice in chunk.get("choices") or []:
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
            if self.kind == "raw":
                content, thinking = choice.get("text") or "", None
            else:
                delta = choice.get("delta") or {}
                content, thinking = delta.get("content") or "", delta.get("reasoning_content")
                for call in delta.get("tool_calls") or []:
                    # OpenAI streams a call as fragments: its name once, its arguments in parts.
                    entry = self.calls.setdefault(call.get("index", 0),
                                                  {"name": "", "arguments": ""})
                    function = call.get("function") or {}
                    entry["name"] += function.get("name") or ""
                    entry["arguments"] += function.get("arguments") or ""
            if content or thinking:
                out.append(self._line({**self._piece(content, thinking), "done": False}))
        return b"".join(out)

    def end(self) -> bytes:
        if self.errored:
            return b""
        lines = []
        if self.calls:
            calls = [{"function": {"name": c["name"], "arguments": _arguments(c["arguments"])}}
                     for _, c in sorted(self.calls.items())]
            lines.append(self._line({**self._piece("", calls=calls), "done": False}))
        lines.append(self._line({**self._piece(""), **self._counters()}))
        return b"".join(lines)

    def failed(self, message: str) -> bytes:
        return orjson.dumps({"error": message}) + b"\n"


def _text(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is not None and not isinstance(value, str):
        raise APIError(400, f"'{name}' must be a string", param=name)
    return value


def _with_images(content: str, images: object, where: str) -> str | list[dict[str, Any]]:
    """Ollama's base64 images as OpenAI content parts; a runner without a vision projector
    answers them with its own error."""
    if images is None or images == []:
        return content
    if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
        raise APIError(400, f"'{where}' must be an array of base64 strings", param=where)
    return [{"type": "text", "text": content},
            *({"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}}
              for image in images)]


def _messages(raw: object) -> list[dict[str, Any]]:
    """Ollama's chat messages as OpenAI's. Ollama's tool calls carry no ids, so ids are made
    up in order and each tool result answers the oldest call not yet answered."""
    if not isinstance(raw, list):
        raise APIError(400, "'messages' must be an array", param="messages")
    out: list[dict[str, Any]] = []
    unanswered: deque[str] = deque()
    made = 0
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("role"), str):
            raise APIError(400, "each message must be an object with a 'role'", param="messages")
        content = item.get("content") or ""
        if not isinstance(content, str):
            raise APIError(400, "a message's 'content' must be a string", param="messages")
        message: dict[str, Any] = {"role": item["role"],
                                   "content": _with_images(content, item.get("images"),
                                                           "messages.images")}
        calls = item.get("tool_calls")
        if calls:
            if not isinstance(calls, list) or not all(
                    isinstance(c, dict) and isinstance(c.get("function"), dict)
                    and isinstance(c["function"].get("name"), str) for c in calls):
                raise APIError(400, "'tool_calls' must be an array of {function: {name, "
                               "arguments}}", param="messages")
            message["tool_calls"] = []
            for call in calls:
                made += 1
                unanswered.append(f"call_{made}")
                arguments = call["function"].get("arguments") or {}
                message["tool_calls"].append({
                    "id": f"call_{made}", "type": "function",
                    "function": {"name": call["function"]["name"],
                                 "arguments": arguments if isinstance(arguments, str)
                                 else orjson.dumps(arguments).decode()}})
        if item["role"] == "tool":
            message["tool_call_id"] = unanswered.popleft() if unanswered else f"call_{made}"
            if isinstance(item.get("tool_name"), str):
                message["name"] = item["tool_name"]
        if item["role"] == "assistant" and isinstance(item.get("thinking"), str):
            message["reasoning_content"] = item["thinking"]
        out.append(message)
    return out


def _stream(data: dict[str, Any]) -> bool:
    value = data.get("stream", True)  # Ollama streams unless told not to
    if value is None:
        return True
    if not isinstance(value, bool):
        raise APIError(400, "'stream' must be a boolean", param="stream")
    return value


def _common(data: dict[str, Any], options: dict[str, Any], stream: bool) -> dict[str, Any]:
    """The upstream fields every generation shares: sampling, format, stream, keep_alive."""
    body = sampling_fields(options)
    fmt = response_format(data.get("format"))
    if fmt is not None:
        body["response_format"] = fmt
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    if "keep_alive" in data:
        body["keep_alive"] = data["keep_alive"]  # the relay takes it out again
    think = data.get("think")
    if isinstance(think, bool):
        body["chat_template_kwargs"] = {"enable_thinking": think}
    elif think in THINK_LEVELS:  # gpt-oss and its kind: the template reads the effort
        body["reasoning_effort"] = think
    elif think is not None:
        raise APIError(400, "'think' must be true, false, or one of "
                       f"{', '.join(map(repr, THINK_LEVELS))}", param="think")
    return body


THINK_LEVELS = ("low", "medium", "high")


async def _check_thinks(service: ModelService, model: str, data: dict[str, Any]) -> None:
    """Ollama's 400 for ``think`` asked of a model whose template cannot think. A model of
    another node is not known here: its node answers for it."""
    think = data.get("think")
    if think is not None and not isinstance(think, bool) and think not in THINK_LEVELS:
        raise APIError(400, "'think' must be true, false, or one of "
                       f"{', '.join(map(repr, THINK_LEVELS))}", param="think")
    if think in (None, False):
        return
    try:
        facts = await service.facts(model)
    except ModelNotFoundError:
        return
    if "thinking" not in facts.capabilities:
        raise APIError(400, f'"{model}" does not support thinking', param="think")


async def _load_or_unload(request: Request, model: str, data: dict[str, Any],
                          kind: Kind) -> Response:
    keep_alive, present = take_keep_alive(data)
    service: ModelService = request.app.state.service
    with service_errors(model):
        if present and keep_alive == 0:
            await service.unload(model)
            reason = "unload"
        else:
            async with service.acquire(model, runner_options(read_options(data)), keep_alive):
                reason = "load"
    empty = Generation(model, kind)._piece("")
    return JSONBytes({"model": model, "created_at": now(), **empty, "done": True,
                      "done_reason": reason})


async def chat(request: Request) -> Response | Relay:
    data = parse_object(await request.body())
    model = require_model(data)
    if not data.get("messages"):
        return await _load_or_unload(request, model, data, "chat")
    options = read_options(data)
    stream = _stream(data)
    await _check_thinks(request.app.state.service, model, data)
    body = {"model": model, "messages": _messages(data["messages"]),
            **_common(data, options, stream)}
    tools = data.get("tools")
    if tools:
        if not isinstance(tools, list):
            raise APIError(400, "'tools' must be an array", param="tools")
        body["tools"] = tools
    return Relay.for_request(request, b"", body, CHAT_PATH, stream, edited=True,
                             options=runner_options(options),
                             translation=Generation(model, "chat"))


async def generate(request: Request) -> Response | Relay:
    data = parse_object(await request.body())
    model = require_model(data)
    prompt = _text(data, "prompt")
    if not prompt:
        return await _load_or_unload(request, model, data, "generate")
    for unsupported in ("suffix", "template"):
        if _text(data, unsupported):
            raise APIError(400, f"'{unsupported}' is not supported: the runner applies the "
                           "model's own (Jinja) chat template", param=unsupported)
    options = read_options(data)
    stream = _stream(data)
    await _check_thinks(request.app.state.service, model, data)
    common = _common(data, options, stream)
    kind: Kind
    if data.get("raw") is True:
        body = {"model": model, "prompt": prompt, **common}
        path, kind = COMPLETIONS_PATH, "raw"
    else:
        system = _text(data, "system")
        messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user",
                         "content": _with_images(prompt, data.get("images"), "images")})
        body = {"model": model, "messages": messages, **common}
        path, kind = CHAT_PATH, "generate"
    return Relay.for_request(request, b"", body, path, stream, edited=True,
                             options=runner_options(options),
                             translation=Generation(model, kind))


routes = [
    Route("/api/chat", chat, methods=["POST"]),
    Route("/api/generate", generate, methods=["POST"]),
]
