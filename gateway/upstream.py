"""A lean, pooled HTTP/1.1 client for the relay's hop to runners on loopback.

Stock httpx costs about 0.85 ms per request more than a pooled asyncio connection here
(DESIGN.md, performance notes), so the hot path uses an ``asyncio.Protocol`` with httptools'
llhttp parser instead; httpx stays for the control plane. The client speaks only what the
relay needs: one request at a time per connection, ``Content-Length`` bodies out, any framing
in (httptools decodes chunked transfer encoding), keep-alive with an idle pool.

llama-server closes idle keep-alive connections, so a *reused* connection that fails before any
response byte arrived is retried once on a fresh one: the runner never saw that request.

A body is bounded three ways, each closing the connection (which stops llama-server generating
and frees its slot): a runner silent for too long mid-body, a reader that takes nothing of it
for too long (its client stopped reading), and, read whole, more bytes than the caller allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import cast

import httptools

_HIGH_WATER = 1 << 20  # pause reading the runner when a slow client leaves this much queued
_MAX_IDLE = 16


class UpstreamError(ConnectionError):
    """The runner's connection failed or closed before the response was complete."""


class UpstreamIdleError(UpstreamError):
    """The runner sent no byte of a body it had started for longer than the idle timeout."""


class UpstreamStalledError(UpstreamError):
    """The reader took nothing of the body for longer than the stall timeout."""


class UpstreamTooLargeError(UpstreamError):
    """The body is longer than the reader allows."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"answer larger than {limit} bytes")
        self.limit = limit


class UpstreamBusyError(RuntimeError):
    """Too many requests already wait for this runner's connections."""

    def __init__(self, waiting: int) -> None:
        super().__init__(f"server busy: {waiting} requests are already waiting for this model")
        self.retry_after = 1


class _Connection(asyncio.Protocol):
    def __init__(self, key: tuple[str, int]) -> None:
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.reused = False
        self._parser = httptools.HttpResponseParser(self)
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.received_any = False
        self.complete = False
        self.keep_alive = False
        self.error: BaseException | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self.taken = 0  # pieces the reader took from the queue: its progress, for the watchdog
        self.last_data = 0.0
        self._headers_done = asyncio.get_running_loop().create_future()
        self._waiter: asyncio.Future[None] | None = None
        # Takes body pieces as they are parsed, with no task woken (gateway.direct_write); False
        # means it took nothing, and that piece and the rest queue for next_chunk().
        self.forward: Callable[[bytes], bool] | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        self.last_data = time.monotonic()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._abort(UpstreamError(f"malformed response from runner: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.complete:
            self._abort(UpstreamError(f"runner closed the connection: {exc or 'EOF'}"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        if not self._headers_done.done():
            self._headers_done.set_result(None)

    def on_body(self, body: bytes) -> None:
        forward = self.forward
        if forward is not None and not self._chunks:
            if forward(body):
                return
            self.forward = None
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        # llhttp answers should_keep_alive() only inside its callbacks; it resets after.
        self.keep_alive = self._parser.should_keep_alive()
        self.complete = True
        self._wake()

    def _abort(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        if not self._headers_done.done():
            self._headers_done.set_exception(exc)
            self._headers_done.exception()  # retrieved here; the waiter re-raises it
        if self.transport is not None:
            self.transport.abort()
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    @property
    def reusable(self) -> bool:
        return (
            self.complete
            and self.error is None
            and self.transport is not None
            and not self.transport.is_closing()
            and self.keep_alive
        )

    def send(self, head: bytes, body: bytes) -> None:
        assert self.transport is not None
        self.transport.write(head + body)  # one segment: requests are small JSON

    async def wait_headers(self) -> None:
        await self._headers_done

    def idle(self, seconds: float) -> None:
        self._abort(UpstreamIdleError(f"runner sent nothing for {seconds:g} s"))

    def stalled(self, seconds: float) -> None:
        # What is queued is for a client that takes nothing: the reader, should it come back,
        # gets the error at once rather than a megabyte more to send first.
        self._chunks.clear()
        self._buffered = 0
        self._abort(UpstreamStalledError(f"the client took nothing for {seconds:g} s"))

    @property
    def holding(self) -> bool:
        """Bytes are waiting for the reader, or reading is paused for it: no silence then."""
        return bool(self._chunks) or self._paused

    @property
    def runners_turn(self) -> bool:
        """The reader waits for the runner's next byte, with nothing queued for it."""
        return self._waiter is not None and not self.holding

    async def next_chunk(self) -> bytes | None:
        """The next body piece, or None at the end; raises UpstreamError on a broken stream."""
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                self.taken += 1
                if self._paused and self._buffered < _HIGH_WATER // 2 and self.transport:
                    self._paused = False
                    self.transport.resume_reading()
                return chunk
            if self.error is not None:
                raise self.error
            if self.complete:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()
            self.transport = None


class _Watchdog:
    """Ends a body that stalls. On the runner's turn (the reader waits, nothing queued), a
    runner silent for ``idle`` seconds: UpstreamIdleError. On the reader's turn (it is away
    sending what it took, or pieces wait for it), a reader that took nothing for ``stall``
    seconds: UpstreamStalledError, then ``on_stall``, since a reader blocked on its client
    forever never sees the error; only its owner can unblock it.

    One timer per body, re-armed when it fires, rather than one per chunk: a token stream's
    every chunk would otherwise create and cancel a timer on the relay's hot path. Silence is
    measured from the time of the last byte, which ``data_received`` notes anyway; the reader's
    progress from a count of the pieces it took, checked every quarter of ``stall``, so a stall
    is caught within 1.25 times its timeout without a clock read per piece."""

    def __init__(self, conn: _Connection, idle: float | None, stall: float | None,
                 on_stall: Callable[[], None] | None) -> None:
        self._conn = conn
        self._idle = idle
        self._stall = stall
        self._on_stall = on_stall
        self._tick = stall / 4 if stall else None
        self._loop = asyncio.get_running_loop()
        now = time.monotonic()
        conn.last_data = now  # the head just came: silence counts from here
        self._taken = conn.taken
        self._progress = now
        self._handle = self._loop.call_later(self._next(idle), self._check)

    def _next(self, delay: float | None) -> float:
        """The next check: after ``delay``, or sooner to look at the reader's progress."""
        tick = self._tick
        if delay is None:
            assert tick is not None  # a watchdog watches for something
            return tick
        return delay if tick is None else min(delay, tick)

    def _check(self) -> None:
        conn = self._conn
        now = time.monotonic()
        runners_turn = conn.runners_turn
        if runners_turn or conn.taken != self._taken:
            self._taken = conn.taken
            self._progress = now
        if runners_turn:
            delay = None
            if self._idle:
                silent = now - conn.last_data
                if silent >= self._idle:
                    conn.idle(self._idle)
                    return
                delay = self._idle - silent
        else:  # a slow client, not a silent runner
            if self._stall and now - self._progress >= self._stall:
                conn.stalled(self._stall)
                if self._on_stall is not None:
                    self._on_stall()
                return
            delay = self._idle
        self._handle = self._loop.call_later(self._next(delay), self._check)

    def cancel(self) -> None:
        self._handle.cancel()


class UpstreamResponse:
    """A response whose body is read incrementally; call :meth:`release` when done."""

    def __init__(self, pool: UpstreamPool, conn: _Connection) -> None:
        self._pool = pool
        self._conn: _Connection | None = conn
        self._watchdog: _Watchdog | None = None
        self.aborted = False
        self.status = conn.status
        self.headers = conn.headers

    def header(self, name: bytes) -> bytes | None:
        lowered = name.lower()
        for key, value in self.headers:
            if key.lower() == lowered:
                return value
        return None

    async def chunks(self, idle_timeout: float | None = None,
                     forward: Callable[[bytes], bool] | None = None,
                     stall_timeout: float | None = None,
                     on_stall: Callable[[], None] | None = None) -> AsyncGenerator[bytes, None]:
        """The body as it arrives; after ``idle_timeout`` s without a byte from the runner it
        raises UpstreamIdleError and closes the connection. After ``stall_timeout`` s in which
        the caller took nothing while the body waited for it (it did not come back for the
        next piece), the connection closes, raising UpstreamStalledError, and ``on_stall`` is
        called: the caller is presumably stuck writing to a client that stopped reading.

        Pieces that ``forward`` takes, as they are parsed, are not yielded; one it refuses is,
        and so is every piece after it until the queue is empty again with the caller back for
        more: ``forward`` writes only while nothing queued or yielded is still on its way, so
        the order holds."""
        conn = self._conn
        if conn is None:
            return
        if idle_timeout or stall_timeout:
            self._watchdog = _Watchdog(conn, idle_timeout or None, stall_timeout or None,
                                       on_stall)
        try:
            while True:
                if not conn.holding:
                    conn.forward = forward
                chunk = await conn.next_chunk()
                if chunk is None:
                    return
                yield chunk
        finally:
            conn.forward = None
            self._stop_watching()

    async def read(self, limit: int | None = None) -> bytes:
        """The whole body. Past ``limit`` bytes (announced, or as they come) it closes the
        connection and raises UpstreamTooLargeError, holding no more than that meanwhile."""
        if limit is None:
            return b"".join([chunk async for chunk in self.chunks()])
        announced = self.header(b"content-length")
        if announced is not None and announced.isdigit() and int(announced) > limit:
            self.abort()
            raise UpstreamTooLargeError(limit)
        pieces: list[bytes] = []
        size = 0
        async with contextlib.aclosing(self.chunks()) as chunks:
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    break
                pieces.append(chunk)
        if size > limit:
            self.abort()
            raise UpstreamTooLargeError(limit)
        return b"".join(pieces)

    def _stop_watching(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def abort(self) -> None:
        """Drop the connection now: the runner sees the client go away and stops generating."""
        self.aborted = True
        self._stop_watching()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            self._pool._give_back(conn)

    def release(self) -> None:
        """Return the connection to the pool if the exchange finished cleanly, else close it."""
        # Even while a chunks() left unfinished awaits its finalizer: a watchdog firing later
        # would act on a connection, and call back into a request, that moved on.
        self._stop_watching()
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool._give_back(conn)


@dataclass
class _Host:
    """Connections to one runner: idle ones, how many are out, and who waits for one.

    A waiter is handed its turn directly (a connection, or ``None``: room to open one), in
    arrival order; a request that finds others waiting queues behind them. Without that, new
    arrivals took each freed connection before the woken waiter ran, and under 16 concurrent
    clients some requests waited 0.5 s while others went through in 1 ms.
    """

    idle: list[_Connection] = field(default_factory=list)
    active: int = 0
    waiters: deque[asyncio.Future[_Connection | None]] = field(default_factory=deque)

    def take_idle(self) -> _Connection | None:
        while self.idle:
            conn = self.idle.pop()
            if conn.transport is not None and not conn.transport.is_closing():
                conn.reused = True
                conn._reset()
                return conn
        return None

    def hand_over(self, conn: _Connection | None) -> bool:
        """Give the first live waiter ``conn`` (or room for a new one); False if none waits."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                if conn is not None:
                    conn.reused = True
                    conn._reset()
                self.active += 1
                waiter.set_result(conn)
                return True
        return False


class UpstreamPool:
    """Keep-alive connections to runners, keyed by (host, port), at most ``limit`` per runner.

    llama-server answers HTTP from a fixed thread pool with a 5 s keep-alive. Opening one
    connection per concurrent request (20 at once after a model swap) made requests finish in
    5-second waves in 3 of 5 runs (40 requests: 15.9-23.5 s); holding no more connections
    than the runner has threads for, and queueing the rest here, took 3.5-4.4 s in 5 of 5.
    """

    def __init__(self, connect_timeout: float = 5.0, max_waiters: int | None = None) -> None:
        self._hosts: dict[tuple[str, int], _Host] = {}
        self._connect_timeout = connect_timeout
        # Requests queued behind a busy runner count against SWITCHBOARD_MAX_QUEUE like those
        # waiting for a load: beyond it, an immediate 503 beats a minute-long wait.
        self._max_waiters = max_waiters

    async def _connect(self, key: tuple[str, int]) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(lambda: _Connection(key), *key)
        except (OSError, TimeoutError) as exc:
            raise UpstreamError(f"cannot connect to runner at {key[0]}:{key[1]}: {exc}") from exc
        return conn

    async def _open(self, host: _Host, key: tuple[str, int]) -> _Connection:
        """A new connection in a slot already counted in ``host.active``."""
        try:
            return await self._connect(key)
        except BaseException:
            host.active -= 1
            host.hand_over(None)
            raise

    async def _checkout(self, key: tuple[str, int], limit: int) -> _Connection:
        host = self._hosts.setdefault(key, _Host())
        if not host.waiters:
            conn = host.take_idle()
            if conn is not None:
                host.active += 1
                return conn
            if host.active < limit:
                host.active += 1
                return await self._open(host, key)
        if self._max_waiters is not None and len(host.waiters) >= self._max_waiters:
            raise UpstreamBusyError(len(host.waiters))
        waiter: asyncio.Future[_Connection | None] = asyncio.get_running_loop().create_future()
        host.waiters.append(waiter)
        try:
            handed = await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                # Our turn came as we were cancelled: pass it on, it is not ours to drop.
                late = waiter.result()
                host.active -= 1
                if late is not None:
                    self._return(host, late)
                else:
                    host.hand_over(None)
            raise
        return handed if handed is not None else await self._open(host, key)

    def _give_back(self, conn: _Connection) -> None:
        host = self._hosts.get(conn.key)
        if host is None:  # the runner was forgotten meanwhile
            conn.close()
            return
        host.active -= 1
        self._return(host, conn)

    def _return(self, host: _Host, conn: _Connection) -> None:
        if conn.reusable:
            if host.hand_over(conn):
                return
            if len(host.idle) < _MAX_IDLE:
                host.idle.append(conn)
                return
        conn.close()
        host.hand_over(None)  # its slot is free: the next waiter opens a fresh connection

    async def request(
        self,
        host: str,
        port: int,
        method: bytes,
        path: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        limit: int = _MAX_IDLE,
    ) -> UpstreamResponse:
        """Send a request and wait for the response head; the body streams from the result.

        At most ``limit`` connections to this runner are in use at once; beyond that the
        request waits for one to come back.
        """
        key = (host, port)
        lines = [method, b" ", path, b" HTTP/1.1\r\nHost: ", f"{host}:{port}".encode(),
                 b"\r\nContent-Length: ", str(len(body)).encode(), b"\r\n"]
        for name, value in headers:
            lines += [name, b": ", value, b"\r\n"]
        lines.append(b"\r\n")
        head = b"".join(lines)
        while True:
            conn = await self._checkout(key, limit)
            try:
                conn.send(head, body)
                await conn.wait_headers()
            except UpstreamError:
                conn.close()
                self._give_back(conn)
                if conn.reused and not conn.received_any:
                    continue  # stale keep-alive connection: the runner never saw this request
                raise
            except BaseException:
                conn.close()
                self._give_back(conn)
                raise
            return UpstreamResponse(self, conn)

    def close_host(self, host: str, port: int) -> None:
        """Forget idle connections to a runner that is going away."""
        entry = self._hosts.pop((host, port), None)
        if entry is not None:
            for conn in entry.idle:
                conn.close()
            for waiter in entry.waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def close(self) -> None:
        for key in list(self._hosts):
            self.close_host(*key)
