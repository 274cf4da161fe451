"""Writing stream chunks straight to the client's connection, under the real Hypercorn."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import httpx
import pytest
from hypercorn.asyncio import serve
from hypercorn.config import Config
from starlette.types import Receive, Scope, Send

from gateway.direct_write import ExposeServerSend, chunked_writer

PIECES = [b"one ", b"two ", b"three"]


@dataclass
class App:
    """Sends a head, then every piece but the last through ``chunked_writer`` when it finds
    one (else through ASGI), then the last piece through ASGI."""

    pieces: list[bytes] = field(default_factory=lambda: list(PIECES))
    found: list[bool] = field(default_factory=list)
    refused: list[int] = field(default_factory=list)  # indexes of pieces the writer refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        write = chunked_writer(scope)
        self.found.append(write is not None)
        for index, piece in enumerate(self.pieces[:-1]):
            if write is not None and write(piece):
                continue
            if write is not None:
                self.refused.append(index)
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": self.pieces[-1], "more_body": False})


@pytest.fixture
async def server() -> AsyncIterator[Callable[[object], str]]:
    """Starts Hypercorn (configured as ``switchboard serve`` does) on the given app."""
    stops: list[tuple[asyncio.Event, asyncio.Task[None]]] = []

    def start(app: object) -> str:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = Config()
        config.bind = [f"fd://{sock.detach()}"]
        config.accesslog = None
        stop = asyncio.Event()
        task = asyncio.create_task(serve(app, config, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
        stops.append((stop, task))
        return f"http://127.0.0.1:{port}"

    yield start
    for stop, task in stops:
        stop.set()
        await asyncio.wait_for(task, 10)


async def _until_up(client: httpx.AsyncClient) -> httpx.AsyncClient:
    for _ in range(100):
        try:
            await client.get("/")
            return client
        except httpx.TransportError:
            await asyncio.sleep(0.05)
    raise AssertionError("server did not start")


def _client(url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, timeout=10)


async def test_chunks_written_past_asgi_arrive_intact_and_keep_the_connection_reusable(
        server: Callable[[object], str]) -> None:
    app = App()
    async with _client(server(ExposeServerSend(app))) as client:
        await _until_up(client)
        bodies = [(await client.post("/")).content for _ in range(3)]
    # Four requests (the first a GET, from _until_up) on one keep-alive connection, h11's
    # state right after each.
    assert bodies == [b"".join(PIECES)] * 3
    assert app.found == [True] * 4  # fails if Hypercorn's objects stop being recognised


async def test_no_writer_without_the_server_send_exposed(server: Callable[[object], str]) -> None:
    app = App()
    async with _client(server(app)) as client:
        await _until_up(client)
        assert (await client.post("/")).content == b"".join(PIECES)
    assert app.found == [False, False]


async def test_no_writer_for_an_http_1_0_client_whose_body_is_not_chunked(
        server: Callable[[object], str]) -> None:
    app = App()
    url = server(ExposeServerSend(app))
    async with _client(url) as client:
        await _until_up(client)
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST / HTTP/1.0\r\nContent-Length: 0\r\n\r\n")
    raw = await asyncio.wait_for(reader.read(), 10)  # HTTP/1.0: the server closes at the end
    writer.close()
    assert raw.endswith(b"\r\n\r\n" + b"".join(PIECES))
    assert app.found == [True, False]


async def test_a_client_that_does_not_read_makes_the_writer_refuse_and_asgi_wait(
        server: Callable[[object], str]) -> None:
    # 8 MB in numbered 64 KiB pieces while the client reads nothing for a second: the writer
    # must refuse once the unsent bytes pass its limit, and what follows through ASGI keeps
    # the order.
    pieces = [b"%07d" % i + b"." * (65536 - 7) for i in range(128)]
    app = App(pieces=pieces)
    url = server(ExposeServerSend(app))
    async with _client(url) as client:
        await _until_up(client)
        async with client.stream("POST", "/") as response:
            await asyncio.sleep(1.0)
            body = await response.aread()
    assert body == b"".join(pieces)
    assert app.refused, "the writer never refused, so the slow path went untested"
