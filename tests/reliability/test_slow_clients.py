"""Clients that hold the gateway by being slow on purpose: reading nothing of an answer, or
sending a body a byte at a time. Each is cut off within its bound, cleanly, and the model and
the gateway stay available to everyone else. On the fake runner, under a 256-descriptor limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.e2e.server import Served, start_fake_server, wait_until

HI = [{"role": "user", "content": "hi"}]
BOUND = 2.0  # SWITCHBOARD_CLIENT_WRITE_TIMEOUT and SWITCHBOARD_BODY_TIMEOUT here
FDS = 256


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, fake_runner: Path) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("slow")
    models = {"endless": {"args": ["--fake-mode", "endless",
                                   "--fake-marker", str(root / "endless-left")]},
              "huge": {"args": ["--fake-mode", "huge", "--fake-size", str(8 << 20)]},
              "fake": {}}
    server = start_fake_server(root, fake_runner, models, {
        "SWITCHBOARD_STREAM_IDLE_TIMEOUT": "5s",
        "SWITCHBOARD_CLIENT_WRITE_TIMEOUT": f"{BOUND:g}s",
        "SWITCHBOARD_BODY_TIMEOUT": f"{BOUND:g}s"})
    # The gateway alone: its runners were not started yet, and keep their own limit.
    resource.prlimit(server.proc.pid, resource.RLIMIT_NOFILE, (FDS, FDS))
    yield server
    server.stop()


def _request(path: str, body: bytes, length: int | None = None) -> bytes:
    return (b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (path.encode(), len(body) if length is None
                                                else length, body))


def _never_reading(served: Served, model: str, stream: bool = True) -> socket.socket:
    """A request from a client that never reads its answer, with a receive buffer as small
    as the kernel allows."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.connect(("127.0.0.1", served.port))
    body = orjson.dumps({"model": model, "messages": HI, "stream": stream})
    sock.sendall(_request("/v1/chat/completions", body))
    return sock


def _request_statuses(served: Served) -> dict[str, float]:
    """switchboard_requests_total by status, over every route."""
    totals: dict[str, float] = {}
    for line in httpx.get(f"{served.url}/metrics", timeout=10).text.splitlines():
        if line.startswith("switchboard_requests_total{"):
            status = line.split('status="', 1)[1].split('"', 1)[0]
            totals[status] = totals.get(status, 0.0) + float(line.rsplit(" ", 1)[1])
    return totals


def test_clients_that_stop_reading_are_cut_off_and_free_the_model(served: Served) -> None:
    # The runner serves one slot, so the relay holds at most two connections to it: two
    # clients that read nothing of an endless stream hold both, and everyone else waited
    # until they let go (idle timeout or not: the runner was never silent, only paused).
    warm = httpx.post(f"{served.url}/v1/chat/completions", timeout=30,
                      json={"model": "endless", "messages": HI})
    assert warm.status_code == 200
    stalled = [_never_reading(served, "endless") for _ in range(2)]
    try:
        time.sleep(0.5)  # both streams fill every buffer on the way and pause the runner
        started = time.monotonic()
        try:
            reply = httpx.post(f"{served.url}/v1/chat/completions", timeout=10,
                               json={"model": "endless", "messages": HI})
        except httpx.TimeoutException:
            pytest.fail("a third client waited 10 s behind two clients that read nothing")
        waited = time.monotonic() - started
        # One line each, saying what happened. Waited for before the stalled sockets close:
        # the second may be cut a few ms after the first freed the connection that served
        # the reply, and a socket closed first is a client that left, not one cut off.
        cut_off = wait_until(lambda: served.log_text().count("cut off") == 2, 5)
    finally:
        for sock in stalled:
            sock.close()
    assert reply.status_code == 200 and waited < 10
    assert waited >= BOUND - 0.5, "served before the stalled clients were cut off?"
    assert cut_off, served.log_text()
    # llama-server saw its connection closed.
    assert (served.tmpdir.parent / "endless-left").exists()
    assert "Traceback" not in served.log_text()


def test_a_client_that_never_reads_a_large_answer_is_cut_off(served: Served) -> None:
    # The runner is released once its answer is in; the client still held its connection,
    # its task and 8 MiB of answer for as long as it liked.
    sock = _never_reading(served, "huge", stream=False)
    try:
        assert wait_until(lambda: "took nothing of its answer" in served.log_text(),
                          BOUND + 10), served.log_text()[-2000:]
        sock.settimeout(5)
        got = 0
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(1 << 20):  # what was queued, then the end
                got += len(chunk)
        assert got < 8 << 20, "the whole answer arrived: nothing was cut off"
    finally:
        sock.close()
    assert "Traceback" not in served.log_text()


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages", "/api/chat"])
def test_a_body_that_stalls_gets_a_408_in_the_route_shape(served: Served, path: str) -> None:
    body = orjson.dumps({"model": "fake", "messages": HI})
    with socket.create_connection(("127.0.0.1", served.port), timeout=BOUND + 5) as sock:
        sock.sendall(_request(path, body[:10], length=len(body)))  # and then nothing
        started = time.monotonic()
        answer = b""
        with contextlib.suppress(TimeoutError, ConnectionError):
            while chunk := sock.recv(65536):
                answer += chunk
        waited = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert BOUND - 0.1 <= waited < BOUND + 1.5
    error = orjson.loads(answer.split(b"\r\n\r\n", 1)[1])
    if path == "/api/chat":
        assert "not received" in error["error"]
    elif path == "/v1/messages":
        assert error["type"] == "error" and "not received" in error["error"]["message"]
    else:
        assert "not received" in error["error"]["message"]


async def _slow_body(port: int, stop: asyncio.Event, leave_after: float | None = None,
                     path: str = "/v1/chat/completions") -> tuple[bytes, float] | None:
    """Headers, then a body of 1000 bytes at one byte every 0.2 s, until the gateway closes
    the connection: what it answered and when, from the first byte sent. None if still
    connected at ``stop``, or when the client leaves first, after ``leave_after`` s."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    answer = b""
    try:
        writer.write(_request(path, b"{", length=1000))
        while not stop.is_set():
            if leave_after is not None and time.monotonic() - started > leave_after:
                return None
            with contextlib.suppress(TimeoutError):
                piece = await asyncio.wait_for(reader.read(65536), 0.2)
                if not piece:
                    return answer, time.monotonic() - started
                answer += piece
            writer.write(b" ")
            await writer.drain()
    except OSError:
        return answer, time.monotonic() - started
    finally:
        writer.close()
    return None


async def test_slow_bodies_cannot_hold_the_gateway_and_leave_no_traceback(
        served: Served) -> None:
    # More slow uploads than the gateway has descriptors: each held one for as long as its
    # client kept trickling. Those beyond the limit were turned away, and so was /health.
    before = _request_statuses(served)
    stop = asyncio.Event()
    clients = [asyncio.create_task(_slow_body(served.port, stop)) for _ in range(300)]
    await asyncio.sleep(0.5)  # all connected, or turned away for want of descriptors
    started = time.monotonic()
    healthy = False
    async with httpx.AsyncClient(timeout=1) as client:
        while not healthy and time.monotonic() - started < BOUND + 4:
            with contextlib.suppress(httpx.TransportError):
                healthy = (await client.get(f"{served.url}/health")).status_code == 200
    waited = time.monotonic() - started
    await asyncio.wait(clients, timeout=max(BOUND + 3 - waited, 0.1))
    stop.set()
    outcomes = await asyncio.gather(*clients)
    assert healthy, f"/health failed for {waited:.1f} s while slow uploads held the gateway"
    assert None not in outcomes, f"{outcomes.count(None)} slow uploads still held after " \
        f"{BOUND + 3:g} s"
    cut = [seconds for answer, seconds in filter(None, outcomes)
           if answer.startswith(b"HTTP/1.1 408 ")]
    assert len(cut) > 150 and max(cut) < BOUND + 1.5  # the rest were turned away at once

    # 50 that leave half way through their upload, before the bound: on a relayed route,
    # and on one the router serves.
    stop = asyncio.Event()
    await asyncio.gather(*[_slow_body(served.port, stop, 0.5, path)
                           for path in ("/v1/chat/completions", "/api/show") for _ in range(25)])
    assert wait_until(lambda: _request_statuses(served).get("499", 0) - before.get("499", 0)
                      >= 50, 5), _request_statuses(served)
    after = _request_statuses(served)
    assert after.get("500", 0) == before.get("500", 0), after
    assert after.get("408", 0) - before.get("408", 0) == len(cut)
    assert "Traceback" not in served.log_text()
    async with httpx.AsyncClient(timeout=5) as client:
        assert (await client.get(f"{served.url}/health")).status_code == 200


def test_a_malformed_chunked_body_is_a_400_and_no_500(served: Served) -> None:
    before = _request_statuses(served)
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n5\r\n{\"mod\r\nnot hex\r\n")
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    time.sleep(0.2)  # the request's own log line and metrics come as it unwinds
    after = _request_statuses(served)
    assert after.get("500", 0) == before.get("500", 0), after
    assert "Traceback" not in served.log_text()
