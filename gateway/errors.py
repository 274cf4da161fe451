"""The one error body switchboard speaks, OpenAI's: ``{"error": {message, type, param, code}}``.

Everything the gateway says itself goes through :class:`APIError`; errors relayed from a
runner are normalised by :func:`normalise_error` (llama-server puts the HTTP status, an
integer, in ``code``, where OpenAI clients expect a string or null).
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

log = logging.getLogger(__name__)

_RETRYABLE = frozenset({408, 409, 429})
_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    501: "not_supported_error",
    502: "server_error",
    503: "unavailable_error",
}


def error_payload(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class APIError(Exception):
    """An error the gateway answers itself, already in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_ or _TYPE_BY_STATUS.get(status, "server_error")
        self.param = param
        self.code = code
        self.headers = headers

    def body(self) -> bytes:
        return orjson.dumps(error_payload(self.message, self.type, self.param, self.code))

    def response(self) -> Response:
        headers = dict(self.headers or {})
        if self.status < 500 and self.status not in _RETRYABLE:
            # The OpenAI SDK retries 408/409/429/5xx unless told otherwise; these would fail
            # the same way again.
            headers.setdefault("x-should-retry", "false")
        return Response(self.body(), self.status, headers, media_type="application/json")


def normalise_error(raw: bytes, status: int) -> bytes:
    """A runner's error body in OpenAI's shape, whatever the runner sent."""
    try:
        data = orjson.loads(raw)
        error = data.get("error") if isinstance(data, dict) else None
    except orjson.JSONDecodeError:
        error = None
    if not isinstance(error, dict):
        text = raw.decode("utf-8", "replace").strip() or f"runner answered HTTP {status}"
        return orjson.dumps(error_payload(text, _TYPE_BY_STATUS.get(status, "server_error")))
    code = error.get("code")
    return orjson.dumps(
        error_payload(
            str(error.get("message", "")),
            str(error.get("type") or _TYPE_BY_STATUS.get(status, "server_error")),
            error.get("param") if isinstance(error.get("param"), str) else None,
            code if isinstance(code, str) else None,
        )
    )


async def api_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return exc.response()


async def http_exception_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = exc.detail if exc.status_code != 404 else f"no route for {request.url.path}"
    headers = dict(exc.headers) if exc.headers else None
    return APIError(exc.status_code, message, headers=headers).response()


async def unhandled_error_handler(request: Request, exc: Exception) -> Response:
    # The traceback goes to our log, never to the client.
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return APIError(500, "internal error in switchboard; see the server log",
                    "server_error").response()


EXCEPTION_HANDLERS = {
    APIError: api_error_handler,
    HTTPException: http_exception_handler,
    Exception: unhandled_error_handler,
}
