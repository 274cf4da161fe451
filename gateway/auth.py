"""API keys: when configured, every API route needs ``Authorization: Bearer <key>`` or
``x-api-key: <key>`` (what the Anthropic SDK sends).

Plain ASGI, so a refused request never reaches routing or a runner; ``/health`` stays open for
load balancers and probes. ``/metrics`` needs a key too (it names models, loaded runners, their
memory and token counts), unless ``metrics_public`` opens it for a scraper on a private network.
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import APIError, dialect_of

# llama.cpp's own routes (tokenize, rerank …) are served at the root as it serves them.
_PROTECTED = ("/v1/", "/api/", "/tokenize", "/detokenize", "/apply-template", "/rerank")


class APIKeyAuth:
    def __init__(self, app: ASGIApp, keys: tuple[str, ...], metrics_public: bool = False) -> None:
        self.app = app
        self.keys = [key.encode() for key in keys]
        self.protected = _PROTECTED if metrics_public else (*_PROTECTED, "/metrics")

    def _allowed(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() == b"bearer" and self._known(token.strip()):
                    return True
            elif name == b"x-api-key" and self._known(value.strip()):
                return True
        return False

    def _known(self, token: bytes) -> bool:
        # compare_digest against every key: the time taken says nothing about which.
        return any([hmac.compare_digest(token, key) for key in self.keys])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or not self.keys
            or not scope["path"].startswith(self.protected)
            or self._allowed(scope)
        ):
            await self.app(scope, receive, send)
            return
        error = APIError(401, "missing or invalid API key: send 'Authorization: Bearer <key>' "
                         "or 'x-api-key: <key>'",
                         code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        await error.response(dialect_of(scope["path"]))(scope, receive, send)
