"""Reading and checking the JSON bodies clients send, with OpenAI-shaped 400s."""

from __future__ import annotations

from typing import Any

import orjson

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
