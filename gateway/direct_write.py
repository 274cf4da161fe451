"""Relayed stream chunks written straight to the client's connection, past the ASGI stack.

Each token of a stream used to cost the gateway about 290 µs of CPU (``bench/relay_cpu.py``,
tokens 13 ms apart): an event-loop wake-up, a task step through the relay, two middleware
``send`` wrappers, then Hypercorn's ``app_send``, its h11 state machine and chunked writer, and
a lock and ``drain()`` on its stream writer. On a 2-core machine that time comes out of
llama-server's compute threads. Written from the upstream parser's callback instead, framed
the way h11 frames it, a token costs about 70 µs, close to a bare byte-forwarding relay's 62.

This reaches into Hypercorn's HTTP/1.1 objects, so it is checked at every use, not assumed:
:func:`chunked_writer` finds the client's transport only when the server is Hypercorn's
asyncio TCP server with its h11 protocol and the response is being sent with chunked framing,
and returns None otherwise (HTTP/2, HTTP/1.0, another ASGI server, a test client); the relay
then sends through ASGI as before. The head and the final chunk still go through ASGI, so
h11's state stays right for the connection's next request. :func:`client_closer` finds the
same transport to reset the connection of a client that stopped reading.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

# Private modules of h11 and Hypercorn: a release that renames them must cost the direct
# path only, never the gateway's start. UNAVAILABLE then says why, once, in the start banner.
UNAVAILABLE: str | None = None
try:
    import h11
    from h11._writers import ChunkedWriter
    from hypercorn.asyncio.tcp_server import TCPServer
    from hypercorn.protocol.h11 import H11Protocol
    from hypercorn.protocol.http_stream import HTTPStream
except (ImportError, AttributeError) as exc:  # pragma: no cover - depends on the versions
    UNAVAILABLE = f"{type(exc).__name__}: {exc}"

_SERVER_SEND = "switchboard.server_send"
# Above this many bytes unsent to the client, chunks go through ASGI, whose drain() waits for
# the client to catch up (and the upstream's own buffer limit then pauses the runner).
HIGH_WATER = 64 * 1024


class ExposeServerSend:
    """Outermost ASGI wrapper: keeps the server's own ``send`` in the scope, since every
    middleware wraps it on the way in and the relay sees only the last wrapper."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[_SERVER_SEND] = send
        await self.app(scope, receive, send)


def _h11_server(scope: Scope) -> tuple[h11.Connection, Any] | None:
    """The client's h11 connection and its transport, if Hypercorn's asyncio TCP server with
    its h11 protocol serves this request, and these versions of them have the attributes
    walked here: each step is looked up with a default, so a rename means None (the ASGI
    path), never an AttributeError on a request."""
    if UNAVAILABLE is not None:
        return None
    stream: Any = getattr(scope.get(_SERVER_SEND), "__self__", None)
    if not isinstance(stream, HTTPStream):
        return None
    protocol: Any = getattr(getattr(stream, "send", None), "__self__", None)
    if not isinstance(protocol, H11Protocol):
        return None
    server: Any = getattr(getattr(protocol, "send", None), "__self__", None)
    if not isinstance(server, TCPServer):
        return None
    connection = getattr(protocol, "connection", None)
    transport = getattr(getattr(server, "writer", None), "transport", None)
    if not isinstance(connection, h11.Connection) or not all(
            hasattr(transport, name) for name in ("write", "abort", "is_closing",
                                                  "get_write_buffer_size")):
        return None
    return connection, transport


def chunked_writer(scope: Scope) -> Callable[[bytes], bool] | None:
    """A function writing one body chunk to the client's connection, chunk-framed, or None
    when that cannot be done safely here. Call it only after the response head went out. The
    function returns False, writing nothing, when the client is slow or gone: that chunk and
    the rest must then go through ASGI."""
    found = _h11_server(scope)
    if found is None:
        return None
    connection, transport = found
    if getattr(connection, "our_state", None) is not h11.SEND_BODY or not isinstance(
        getattr(connection, "_writer", None), ChunkedWriter
    ):
        return None

    def write(chunk: bytes) -> bool:
        if transport.is_closing() or transport.get_write_buffer_size() > HIGH_WATER:
            return False
        if chunk:  # an empty chunk would read as the end of the body
            transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        return True

    return write


def client_closer(scope: Scope) -> Callable[[], None] | None:
    """A function resetting the client's connection at once, or None when it cannot be found
    here. For a client that stopped reading: a send to it waits in ``drain()`` for good, and a
    graceful close would wait as long to flush what is buffered; a reset ends both (Hypercorn
    then sees the connection lost and tells the app the client went)."""
    found = _h11_server(scope)
    if found is None:
        return None
    abort: Callable[[], None] = found[1].abort
    return abort


def describe() -> str:
    """One line for the start banner: whether streams can be written straight to clients."""
    if UNAVAILABLE is not None:
        return (f"relay: direct writes off, streams go through ASGI (h11 or Hypercorn "
                f"internals changed: {UNAVAILABLE})")
    return "relay: direct writes to clients on (Hypercorn h11 over asyncio)"
