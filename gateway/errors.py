"""The error bodies switchboard speaks: OpenAI's, and Anthropic's and Ollama's on their routes.

Everything the gateway says itself goes through :class:`APIError`, rendered in the
:class:`Dialect` of the path it answers; errors relayed from a runner are normalised by
:func:`normalise_error` (llama-server puts the HTTP status, an integer, in ``code``, where
OpenAI clients expect a string or null).

- OpenAI (``/v1/*``, ``/tokenize`` …): ``{"error": {message, type, param, code}}``
- Anthropic (``/v1/messages*``): ``{"type": "error", "error": {type, message}}``
- Ollama (``/api/*``): ``{"error": message}`` (and ``code`` where one applies), which its
  client reads as the message
"""

from __future__ import annotations

import contextlib
import enum
import logging
from collections.abc import Iterator
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from runner import service

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


_ANTHROPIC_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}


class Dialect(enum.Enum):
    """The API family a route belongs to; each has its own error body."""

    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    OLLAMA = "ollama"


def dialect_of(path: str) -> Dialect:
    if path.startswith("/v1/messages"):
        return Dialect.ANTHROPIC
    if path.startswith("/api/"):
        return Dialect.OLLAMA
    return Dialect.OPENAI


def error_payload(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def render_error(
    dialect: Dialect,
    status: int,
    message: str,
    type_: str | None = None,
    param: str | None = None,
    code: str | None = None,
) -> bytes:
    """One error body in ``dialect``; ``type_`` defaults from the status."""
    if dialect is Dialect.OLLAMA:
        # Ollama's clients read "error"; a code, where we have one, rides beside it.
        return orjson.dumps({"error": message, "code": code} if code else {"error": message})
    if dialect is Dialect.ANTHROPIC:
        kind = _ANTHROPIC_TYPE_BY_STATUS.get(status, "api_error")
        return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})
    return orjson.dumps(error_payload(message, type_ or _TYPE_BY_STATUS.get(status, "server_error"),
                                      param, code))


def stream_error_event(dialect: Dialect, message: str) -> bytes:
    """The SSE event that ends a stream which failed after its head was sent."""
    if dialect is Dialect.ANTHROPIC:
        return b"event: error\ndata: " + render_error(dialect, 500, message) + b"\n\n"
    return b"data: " + render_error(Dialect.OPENAI, 500, message, "server_error") + b"\n\n"


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

    def body(self, dialect: Dialect = Dialect.OPENAI) -> bytes:
        return render_error(dialect, self.status, self.message, self.type, self.param, self.code)

    def response(self, dialect: Dialect = Dialect.OPENAI) -> Response:
        headers = dict(self.headers or {})
        if self.status < 500 and self.status not in _RETRYABLE:
            # The OpenAI SDK retries 408/409/429/5xx unless told otherwise; these would fail
            # the same way again.
            headers.setdefault("x-should-retry", "false")
        return Response(self.body(dialect), self.status, headers, media_type="application/json")


def model_not_found(name: str) -> APIError:
    """The one answer for a model name that names nothing servable, on every route."""
    return APIError(404, f"model '{name}' not found", param="model", code="model_not_found")


def service_error(exc: service.ServiceError, model: str | None = None) -> APIError:
    """The runner side's refusals as the API errors clients get: the one translation, for
    every route. ``model`` is the name the client sent, where there is one."""
    name = model or getattr(exc, "model", None) or "?"
    match exc:
        case service.ModelNotFoundError() | service.ModelNotInStoreError():
            return model_not_found(name)
        case service.QueueFullError():
            return APIError(503, str(exc), code="queue_full",
                            headers={"Retry-After": str(exc.retry_after)})
        case service.CreateError():
            return APIError(exc.status, str(exc), param=exc.param)
        case service.NodesUnreachableError():
            return APIError(503, str(exc), code="nodes_unreachable",
                            headers={"Retry-After": str(exc.retry_after)})
        case service.NoRoomError():
            return APIError(503, str(exc), code="no_room",
                            headers={"Retry-After": str(exc.retry_after)})
        case service.ModeNotServedError():
            return APIError(400, str(exc), param="model", code="model_not_supported")
        case service.ModelTooLargeError():
            return APIError(400, str(exc), param="model", code="insufficient_memory")
        case service.ModelSourceError():
            log.error("cannot load %s: %s", name, exc)
            return APIError(503, f"model '{name}' cannot be loaded: {exc}")
        case service.RunnerStartError() | service.NoRunnerError():
            log.error("cannot load %s: %s", name, exc)
            return APIError(503, f"model '{name}' failed to load: {exc}")
        case service.ShuttingDownError():
            return APIError(503, str(exc))
        case service.ModelInUseError():
            return APIError(409, str(exc), param="model")
        case service.ConfiguredModelError() | service.InvalidNameError():
            return APIError(400, str(exc), param="model")
        case service.StoreError():  # still held, by a runner of another server on this store
            return APIError(409, str(exc), param="model")
        case service.PullError():
            return APIError(exc.status, str(exc), param="model")
        case service.PullRefusedError():
            return APIError(403, str(exc), param=exc.param, code="host_not_allowed")
    log.error("untranslated refusal for %s: %r", name, exc)
    return APIError(503, str(exc))


@contextlib.contextmanager
def service_errors(model: str | None = None) -> Iterator[None]:
    """Raise the runner side's refusals inside the block as API errors, naming ``model``."""
    try:
        yield
    except service.ServiceError as exc:
        raise service_error(exc, model) from exc


def runner_error(raw: bytes, status: int) -> APIError:
    """What a runner's error body says, whatever shape it came in."""
    try:
        data = orjson.loads(raw)
        error = data.get("error") if isinstance(data, dict) else None
        if error is None and isinstance(data, dict) and "message" in data:
            error = data  # an older llama-server's "error: {...}" stream line: the bare object
    except orjson.JSONDecodeError:
        error = None
    if isinstance(error, str):  # Ollama-like runners
        return APIError(status, error)
    if not isinstance(error, dict):
        text = raw.decode("utf-8", "replace").strip() or f"runner answered HTTP {status}"
        return APIError(status, text)
    code, param, type_ = error.get("code"), error.get("param"), error.get("type")
    return APIError(
        status,
        str(error.get("message", "")),
        type_ if isinstance(type_, str) and type_ else None,
        param if isinstance(param, str) else None,
        code if isinstance(code, str) else None,
    )


def normalise_error(raw: bytes, status: int, dialect: Dialect = Dialect.OPENAI) -> bytes:
    """A runner's error body in ``dialect``'s shape, whatever the runner sent."""
    return runner_error(raw, status).body(dialect)


async def api_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return exc.response(dialect_of(request.url.path))


async def service_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, service.ServiceError)
    return service_error(exc).response(dialect_of(request.url.path))


async def http_exception_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = exc.detail if exc.status_code != 404 else f"no route for {request.url.path}"
    headers = dict(exc.headers) if exc.headers else None
    return APIError(exc.status_code, message, headers=headers).response(
        dialect_of(request.url.path))


async def client_disconnect_handler(request: Request, exc: Exception) -> Response:
    # The client left mid-body (routes off the hot path; gateway.relay_dispatch handles its own):
    # no traceback, and the access log and metrics count nginx's 499, not a 500. Nobody
    # reads the response.
    assert isinstance(exc, ClientDisconnect)
    return Response(status_code=499)


async def unhandled_error_handler(request: Request, exc: Exception) -> Response:
    # The traceback goes to our log, never to the client.
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return APIError(500, "internal error in switchboard; see the server log",
                    "server_error").response(dialect_of(request.url.path))


EXCEPTION_HANDLERS = {
    APIError: api_error_handler,
    service.ServiceError: service_error_handler,
    HTTPException: http_exception_handler,
    ClientDisconnect: client_disconnect_handler,
    Exception: unhandled_error_handler,
}
