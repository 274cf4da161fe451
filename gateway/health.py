"""GET /health: the gateway is up and serving (runners load on demand)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.json_response import JSONBytes


async def health(request: Request) -> Response:
    return JSONBytes({"status": "ok"})


routes = [Route("/health", health, methods=["GET"])]
