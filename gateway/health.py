"""GET /health: the gateway is up and serving (runners load on demand); GET / says so in words,
as Ollama's root does for the clients that probe it; the console's icon is /favicon.ico."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import Route

from gateway.json_response import JSONBytes


async def health(request: Request) -> Response:
    return JSONBytes({"status": "ok"})


async def root(request: Request) -> Response:
    return PlainTextResponse("switchboard is running")


async def favicon(request: Request) -> Response:
    return FileResponse(ICON, media_type="image/svg+xml",
                        headers={"Cache-Control": "max-age=86400"})


ICON = Path(__file__).parent / "ui" / "favicon.svg"
routes = [Route("/health", health, methods=["GET"]), Route("/", root, methods=["GET"]),
          Route("/favicon.ico", favicon, methods=["GET"])]
