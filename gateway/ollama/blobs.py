"""HEAD and POST /api/blobs/{digest}: Ollama's blob upload, as ``ollama create`` uses it (and
the Python client's ``create_blob``) before a create names the blob in ``files`` or
``adapters``.

An upload is a model's size, so it is outside the body limit and the whole-body timeout that
every other route has (``gateway.body_limit``); it is bounded instead by each chunk arriving
within ``body_timeout``, and it is stored only if it hashes to its digest.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.errors import APIError, service_errors
from runner.service import ModelService

PREFIX = "/api/blobs/"


async def head(request: Request) -> Response:
    service: ModelService = request.app.state.service
    return Response(status_code=200 if service.has_blob(request.path_params["digest"]) else 404)


async def upload(request: Request) -> Response:
    service: ModelService = request.app.state.service
    digest: str = request.path_params["digest"]
    if service.has_blob(digest):
        return Response(status_code=200)  # as Ollama: nothing to send twice
    idle = request.app.state.settings.body_timeout or None

    async def chunks() -> AsyncIterator[bytes]:
        stream = request.stream().__aiter__()
        while True:
            try:
                async with asyncio.timeout(idle):
                    chunk = await anext(stream)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise APIError(408, f"the upload sent nothing for {idle:g} s "
                               "(SWITCHBOARD_BODY_TIMEOUT)", code="request_timeout") from None
            yield chunk

    with service_errors(digest):
        await service.receive_blob(digest, chunks())
    return Response(status_code=201)


routes = [Route(PREFIX + "{digest}", head, methods=["HEAD"]),
          Route(PREFIX + "{digest}", upload, methods=["POST"])]
