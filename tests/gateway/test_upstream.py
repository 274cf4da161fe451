from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from gateway.upstream import (
    UpstreamError,
    UpstreamIdleError,
    UpstreamPool,
    UpstreamStalledError,
    UpstreamTooLargeError,
)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + await reader.readexactly(length)


class Server:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Server:
        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.handler(reader, writer)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        self._server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()


@pytest.fixture
async def pool() -> AsyncIterator[UpstreamPool]:
    p = UpstreamPool()
    yield p
    p.close()


def _fixed(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


async def test_upstream_reuses_a_keep_alive_connection(pool: UpstreamPool) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            server.requests.append(await _read_request(reader))
            writer.write(_fixed(b'{"ok":true}'))
            await writer.drain()

    async with Server(handler) as server:
        for _ in range(3):
            response = await pool.request("127.0.0.1", server.port, b"POST", b"/x",
                                          [(b"Authorization", b"Bearer k")], b"{}")
            assert response.status == 200
            assert await response.read() == b'{"ok":true}'
            response.release()
        assert server.connections == 1
        assert b"Authorization: Bearer k" in server.requests[0]
        assert b"\r\nContent-Length: 2\r\n" in server.requests[0]
        assert server.requests[0].endswith(b"\r\n\r\n{}")


async def test_a_forgotten_runner_leaves_nothing_in_the_pool(pool: UpstreamPool) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            server.requests.append(await _read_request(reader))
            writer.write(_fixed(b"{}"))
            await writer.drain()

    async with Server(handler) as server:
        response = await pool.request("127.0.0.1", server.port, b"POST", b"/", [], b"{}")
        await response.read()
        response.release()
        assert ("127.0.0.1", server.port) in pool._hosts
        pool.close_host("127.0.0.1", server.port)  # what the app does once a runner stops
        assert pool._hosts == {}
        again = await pool.request("127.0.0.1", server.port, b"POST", b"/", [], b"{}")
        await again.read()
        again.release()
        assert server.connections == 2, "the idle connection to the gone runner was kept"


async def test_upstream_retries_a_stale_idle_connection_once(pool: UpstreamPool) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        # Answer, then close like llama-server does with idle keep-alive connections,
        # without announcing it in the response.
        writer.write(_fixed(b"one"))
        await writer.drain()

    async with Server(handler) as server:
        first = await pool.request("127.0.0.1", server.port, b"POST", b"/", [], b"")
        assert await first.read() == b"one"
        first.release()
        await asyncio.sleep(0.05)  # the server has closed its end by now
        second = await pool.request("127.0.0.1", server.port, b"POST", b"/", [], b"")
        await asyncio.sleep(0.1)  # both pieces arrive before anyone reads this body
        assert await second.read() == b"one"
        second.release()
        assert server.connections == 2


async def test_upstream_decodes_chunked_bodies_piece_by_piece(pool: UpstreamPool) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                     b"Content-Type: text/event-stream\r\n\r\n")
        for piece in (b"data: 1\n\n", b"data: 2\n\n"):
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
            await asyncio.sleep(0.02)
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async with Server(handler) as server:
        response = await pool.request("127.0.0.1", server.port, b"POST", b"/", [], b"{}")
        assert response.header(b"content-type") == b"text/event-stream"
        pieces = [chunk async for chunk in response.chunks()]
        response.release()
        assert pieces == [b"data: 1\n\n", b"data: 2\n\n"]


async def test_upstream_close_mid_body_raises(pool: UpstreamPool) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()

    async with Server(handler) as server:
        response = await pool.request("127.0.0.1", server.port, b"POST", b"/", [], b"")
        with pytest.raises(UpstreamError):
            await response.read()
        response.release()


async def test_upstream_fresh_connection_failure_is_not_retried(pool: UpstreamPool) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)  # and hang up without a word

    async with Server(handler) as server:
        with pytest.raises(UpstreamError):
            await pool.request("127.0.0.1", server.port, b"POST", b"/", [], b"")
        assert server.connections == 1


async def test_upstream_refused_connection_is_an_upstream_error(pool: UpstreamPool) -> None:
    async with Server(lambda r, w: asyncio.sleep(0)) as server:
        port = server.port
    with pytest.raises(UpstreamError, match="cannot connect"):
        await pool.request("127.0.0.1", port, b"POST", b"/", [], b"")


async def test_upstream_abort_closes_the_connection_promptly(pool: UpstreamPool) -> None:
    closed = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        await reader.read()  # EOF once the client aborts
        closed.set()

    async with Server(handler) as server:
        response = await pool.request("127.0.0.1", server.port, b"POST", b"/", [], b"")
        chunks = response.chunks()
        assert await chunks.__anext__() == b"hello"
        response.abort()
        await asyncio.wait_for(closed.wait(), 2)
        response.release()
        assert response.aborted


async def test_upstream_silence_mid_body_past_the_idle_timeout_closes_the_connection(
    pool: UpstreamPool,
) -> None:
    closed = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for piece in (b"one", b"two"):  # 0.1 s apart: each gap is under the timeout
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
            await asyncio.sleep(0.1)
        await reader.read()  # then silence, until the client gives up
        closed.set()

    async with Server(handler) as server:
        response = await pool.request("127.0.0.1", server.port, b"POST", b"/", [], b"")
        received: list[bytes] = []
        started = asyncio.get_running_loop().time()
        with pytest.raises(UpstreamIdleError, match=r"nothing for 0\.3 s"):
            async for chunk in response.chunks(idle_timeout=0.3):
                received.append(chunk)
        assert received == [b"one", b"two"]
        assert 0.3 <= asyncio.get_running_loop().time() - started < 1.0
        await asyncio.wait_for(closed.wait(), 2)
        response.release()


async def test_upstream_idle_timeout_spares_a_slow_reader_with_chunks_waiting(
    pool: UpstreamPool,
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"3\r\none\r\n3\r\ntwo\r\n")
        await writer.drain()
        await asyncio.sleep(0.45)  # silent past the timeout, while "two" waits unread
        writer.write(b"5\r\nthree\r\n")
        await writer.drain()
        await reader.read()

    async with Server(handler) as server:
        response = await pool.request("127.0.0.1", server.port, b"POST", b"/", [], b"")
        received: list[bytes] = []
        with pytest.raises(UpstreamIdleError):
            async for chunk in response.chunks(idle_timeout=0.2):
                received.append(chunk)
                if chunk == b"one":
                    await asyncio.sleep(0.5)  # a slow client: "two" waits to be read
        # Not cut off while a chunk waited for the reader, so "three" still came.
        assert received == [b"one", b"two", b"three"]
        response.release()


async def test_upstream_never_opens_more_than_limit_connections(pool: UpstreamPool) -> None:
    gate = asyncio.Event()
    open_now = 0
    most = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal open_now, most
        open_now += 1
        most = max(most, open_now)
        try:
            while True:
                await _read_request(reader)
                await gate.wait()
                writer.write(_fixed(b"ok"))
                await writer.drain()
        finally:
            open_now -= 1

    async def one() -> bytes:
        response = await pool.request("127.0.0.1", server.port, b"POST", b"/", [], b"",
                                      limit=2)
        body = await response.read()
        response.release()
        return body

    async with Server(handler) as server:
        calls = [asyncio.create_task(one()) for _ in range(6)]
        await asyncio.sleep(0.05)
        assert server.connections == 2, "requests beyond the limit must wait for a connection"
        gate.set()
        assert await asyncio.gather(*calls) == [b"ok"] * 6
        assert most <= 2 and server.connections == 2


async def test_upstream_aborted_exchange_frees_its_connection_slot(pool: UpstreamPool) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        await reader.read()

    async with Server(handler) as server:
        first = await pool.request("127.0.0.1", server.port, b"POST", b"/", [], b"", limit=1)
        first.abort()
        second = await asyncio.wait_for(
            pool.request("127.0.0.1", server.port, b"POST", b"/", [], b"", limit=1), 1.0
        )
        second.abort()


async def test_upstream_cancelled_waiter_passes_its_turn_on(pool: UpstreamPool) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await _read_request(reader)
            writer.write(_fixed(b"ok"))
            await writer.drain()

    async with Server(handler) as server:
        held = await pool.request("127.0.0.1", server.port, b"POST", b"/", [], b"", limit=1)
        quitter = asyncio.create_task(
            pool.request("127.0.0.1", server.port, b"POST", b"/", [], b"", limit=1))
        stayer = asyncio.create_task(
            pool.request("127.0.0.1", server.port, b"POST", b"/", [], b"", limit=1))
        await asyncio.sleep(0.01)
        assert await held.read() == b"ok"
        held.release()  # hands the turn to the quitter...
        quitter.cancel()  # ...which leaves before taking it
        response = await asyncio.wait_for(stayer, 1.0)
        assert await response.read() == b"ok"
        response.release()
        with pytest.raises(asyncio.CancelledError):
            await quitter


async def test_waiters_are_served_in_arrival_order_not_overtaken_by_newcomers() -> None:
    """A freed connection goes to the longest waiter; a request arriving meanwhile queues."""
    from gateway.upstream import UpstreamPool, _Connection, _Host

    pool = UpstreamPool()
    key = ("127.0.0.1", 9)
    host = _Host()
    pool._hosts[key] = host

    class Alive:
        def is_closing(self) -> bool:
            return False

        def abort(self) -> None:
            pass

    conn = _Connection(key)
    conn.transport = Alive()  # type: ignore[assignment]
    conn.complete = conn.keep_alive = True
    host.active = 1  # the one connection allowed is out
    order: list[str] = []

    async def wait(name: str) -> None:
        got = await pool._checkout(key, limit=1)
        order.append(name)
        got.complete = got.keep_alive = True
        pool._give_back(got)

    first = asyncio.create_task(wait("first"))
    await asyncio.sleep(0)
    second = asyncio.create_task(wait("second"))
    await asyncio.sleep(0)
    pool._give_back(conn)  # frees the slot: "first" must get it
    late = asyncio.create_task(wait("late"))  # arrives while both wait: goes behind them
    await asyncio.gather(first, second, late)
    assert order == ["first", "second", "late"]


async def test_waiters_beyond_the_queue_bound_are_refused_at_once() -> None:
    from gateway.upstream import UpstreamBusyError, UpstreamPool, _Host

    pool = UpstreamPool(max_waiters=1)
    key = ("127.0.0.1", 9)
    pool._hosts[key] = _Host(active=1)  # the one connection allowed is out
    first = asyncio.create_task(pool._checkout(key, limit=1))
    await asyncio.sleep(0)
    with pytest.raises(UpstreamBusyError, match="1 requests are already waiting"):
        await pool._checkout(key, limit=1)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first


def _chunked_pieces(*pieces: bytes, gap: float = 0.03) -> Handler:
    """A runner that streams ``pieces`` ``gap`` s apart, then ends, on one keep-alive
    connection."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await _read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for piece in pieces:
                await writer.drain()
                await asyncio.sleep(gap)  # after the head too: the reader is waiting by then
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            writer.write(b"0\r\n\r\n")
            await writer.drain()

    return handler


async def test_upstream_forward_never_overtakes_a_piece_it_refused(pool: UpstreamPool) -> None:
    out: list[tuple[str, bytes]] = []  # what reached the client, in order, and which way

    def forward(piece: bytes) -> bool:
        if piece == b"two":
            return False  # as when the client's buffer is full
        out.append(("forwarded", piece))
        return True

    pieces = (b"one", b"two", b"three", b"four", b"five", b"six")  # at 0.1, 0.2, ... 0.6 s
    async with Server(_chunked_pieces(*pieces, gap=0.1)) as server:
        response = await pool.request("127.0.0.1", server.port, b"POST", b"/", [], b"")
        async for piece in response.chunks(forward=forward):
            if piece in (b"two", b"three"):
                await asyncio.sleep(0.17)  # slow to send these: later pieces arrive meanwhile
            out.append(("yielded", piece))
        response.release()
    # "three" came while "two" was on its way, "four" and "five" while "three" was: each had
    # to queue behind it. By "six" nothing was pending, and forwarding resumed.
    assert out == [("forwarded", b"one"), ("yielded", b"two"), ("yielded", b"three"),
                   ("yielded", b"four"), ("yielded", b"five"), ("forwarded", b"six")]


async def test_upstream_forward_does_not_outlive_its_exchange(pool: UpstreamPool) -> None:
    taken: list[bytes] = []

    def forward(piece: bytes) -> bool:
        taken.append(piece)
        return True

    async with Server(_chunked_pieces(b"one", b"two")) as server:
        first = await pool.request("127.0.0.1", server.port, b"POST", b"/", [], b"")
        assert [piece async for piece in first.chunks(forward=forward)] == []
        first.release()
        # The same connection, reused: its next body must not go to the last client.
        second = await pool.request("127.0.0.1", server.port, b"POST", b"/", [], b"")
        await asyncio.sleep(0.1)  # both pieces arrive before anyone reads this body
        assert [piece async for piece in second.chunks()] == [b"one", b"two"]
        second.release()
        assert server.connections == 1
    assert taken == [b"one", b"two"]


def _endless(closed: asyncio.Event, piece: bytes = b"." * 16384) -> Handler:
    """A runner that streams ``piece`` after ``piece`` until the connection closes, then
    sets ``closed``."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            while True:
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                await writer.drain()
        finally:
            closed.set()

    return handler


async def test_upstream_reader_that_takes_nothing_past_the_stall_timeout_is_cut_off(
    pool: UpstreamPool,
) -> None:
    stalled, closed = asyncio.Event(), asyncio.Event()
    async with Server(_endless(closed)) as server:
        response = await pool.request("127.0.0.1", server.port, b"POST", b"/", [], b"")
        chunks = response.chunks(idle_timeout=5, stall_timeout=0.4, on_stall=stalled.set)
        assert await chunks.__anext__()
        started = asyncio.get_running_loop().time()
        # Away, as a relay blocked sending to a client that reads nothing: the runner fills
        # the queue, reading pauses, and the runner is never silent, only held.
        await asyncio.wait_for(stalled.wait(), 3)
        waited = asyncio.get_running_loop().time() - started
        assert 0.4 <= waited < 1.5  # 0.4 s, checked every 0.1 s; slack for a busy machine
        with pytest.raises(UpstreamStalledError, match=r"took nothing for 0\.4 s"):
            await chunks.__anext__()  # at once: what was queued for nobody is dropped
        # The runner saw its connection closed, which is what frees llama-server's slot.
        await asyncio.wait_for(closed.wait(), 2)
        response.release()


async def test_upstream_slow_reader_that_keeps_taking_is_not_cut_off(pool: UpstreamPool) -> None:
    stalled: list[bool] = []
    async with Server(_endless(asyncio.Event())) as server:
        response = await pool.request("127.0.0.1", server.port, b"POST", b"/", [], b"")
        taken = 0
        started = asyncio.get_running_loop().time()
        async for _ in response.chunks(stall_timeout=0.3, on_stall=lambda: stalled.append(True)):
            taken += 1
            # Slower than the runner, so something always waits for it, but taking a piece
            # every 0.1 s: that is progress, however far behind it falls.
            await asyncio.sleep(0.1)
            if asyncio.get_running_loop().time() - started > 1.5:
                break
        response.abort()
    assert not stalled and taken >= 10


async def test_upstream_read_past_the_limit_closes_the_connection(pool: UpstreamPool) -> None:
    closed = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            for _ in range(4096):  # 64 MiB, far more than the buffers on the way hold
                writer.write(b"4000\r\n" + b"x" * 16384 + b"\r\n")
                await writer.drain()
        except ConnectionError:
            closed.set()

    async with Server(handler) as server:
        response = await pool.request("127.0.0.1", server.port, b"POST", b"/", [], b"")
        with pytest.raises(UpstreamTooLargeError, match="larger than 100000 bytes"):
            await response.read(limit=100_000)
        await asyncio.wait_for(closed.wait(), 5)
        assert response.aborted
        response.release()


async def test_upstream_read_refuses_an_announced_length_past_the_limit_unread(
    pool: UpstreamPool,
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000001\r\n\r\n")
        await writer.drain()
        await reader.read()  # no body: the client must not wait for it

    async with Server(handler) as server:
        response = await pool.request("127.0.0.1", server.port, b"POST", b"/", [], b"")
        with pytest.raises(UpstreamTooLargeError):
            await asyncio.wait_for(response.read(limit=1_000_000), 1)
        response.release()


async def test_upstream_read_of_exactly_the_limit_is_whole(pool: UpstreamPool) -> None:
    async with Server(_chunked_pieces(b"a" * 600, b"b" * 400, gap=0)) as server:
        response = await pool.request("127.0.0.1", server.port, b"POST", b"/", [], b"")
        assert await response.read(limit=1000) == b"a" * 600 + b"b" * 400
        response.release()
