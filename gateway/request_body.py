"""Reading and checking the JSON bodies clients send, with OpenAI-shaped 400s."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request

from gateway.errors import APIError
from runner.settings import parse_duration


def parse_object(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 saying what is wrong with it."""
    if not body:
        raise APIError(400, "request body is empty; expected a JSON object")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise APIError(400, f"request body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise APIError(400, "request body must be a JSON object")
    return data


async def read_request(request: Request) -> tuple[bytes, dict[str, Any]]:
    """The raw body and its JSON object, which names a model: what every relayed route starts
    from (the relay routes by that name, so a route need not carry it)."""
    body = await request.body()
    data = parse_object(body)
    require_model(data)
    return body, data


def require_model(data: dict[str, Any]) -> str:
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise APIError(400, "'model' is required and must be a non-empty string", param="model")
    return model


def take_keep_alive(data: dict[str, Any]) -> tuple[float | None, bool]:
    """Remove ``keep_alive`` (ours, not the runner's); returns (seconds, whether it was there)."""
    if "keep_alive" not in data:
        return None, False
    raw = data.pop("keep_alive")
    try:
        return parse_duration(raw), True
    except ValueError as exc:
        raise APIError(400, f"invalid keep_alive: {exc}", param="keep_alive") from exc


def require_flag(data: dict[str, Any], name: str) -> bool:
    value = data.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise APIError(400, f"'{name}' must be a boolean", param=name)
    return value


def is_text_or_tokens(value: object) -> bool:
    """OpenAI's forms for a prompt or an input: a string, strings, token ids, token arrays."""
    if isinstance(value, str):
        return True
    return isinstance(value, list) and bool(value) and (
        all(isinstance(item, str) for item in value)
        or all(isinstance(item, int) for item in value)
        or all(isinstance(item, list) and all(isinstance(t, int) for t in item) for item in value)
    )


def require_single_choice(data: dict[str, Any]) -> None:
    """Only n=1: llama-server answers other values with a 500, which the SDK would retry."""
    n = data.get("n")
    if n is not None and n != 1:
        raise APIError(400, "only n=1 is supported", param="n", code="unsupported_value")
