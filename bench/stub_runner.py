#!/usr/bin/env python3
"""A llama-server stand-in that answers at once, to measure what a proxy in front adds.

Launchable as a runner (it takes llama-server's flags and honours ``LLAMA_API_KEY``), so
switchboard can start it with ``SWITCHBOARD_LLAMA_SERVER``; router mode and direct calls use it
the same way. Canned replies: a chat or text completion, or with ``"stream": true`` one SSE
event per token up to ``max_tokens`` (default 8), then ``[DONE]``. uvloop + httptools: a few
microseconds a request, so the proxy's cost is what remains. A streamed request may carry
``"stub_interval": SECONDS``: its tokens then go out one write each, that far apart, the way
a model's do (all at once, a proxy reads them in one go and its per-token cost hides).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

import httptools
import orjson
import uvloop

_HEALTH = b'{"status":"ok"}'


def _completion(model: str, chat: bool) -> bytes:
    choice: dict[str, object] = (
        {"index": 0, "finish_reason": "length", "message": {"role": "assistant", "content": "hi"}}
        if chat else {"index": 0, "finish_reason": "length", "text": "hi"}
    )
    return orjson.dumps({
        "id": "stub", "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()), "model": model, "choices": [choice],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    })


def _response(status: bytes, body: bytes, content_type: bytes = b"application/json") -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\nContent-Type: " + content_type +
            b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


class Stub(asyncio.Protocol):
    def __init__(self, model: str, key: bytes | None) -> None:
        self.model = model
        self.key = key
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body = bytearray()
        self.auth: bytes | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url, self.auth = b"", None
        self.body.clear()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"authorization":
            self.auth = value

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        assert self.transport is not None
        path = self.url.split(b"?")[0]
        if path == b"/health":
            self.transport.write(_response(b"200 OK", _HEALTH))
            return
        if self.key is not None and self.auth != b"Bearer " + self.key:
            self.transport.write(_response(b"401 Unauthorized", b'{"error":"bad key"}'))
            return
        if path not in (b"/v1/chat/completions", b"/v1/completions", b"/completion"):
            self.transport.write(_response(b"404 Not Found", b'{"error":"no route"}'))
            return
        request = orjson.loads(self.body) if self.body else {}
        chat = path == b"/v1/chat/completions"
        if request.get("stream"):
            self._stream(int(request.get("max_tokens") or 8), chat,
                         float(request.get("stub_interval") or 0))
        else:
            self.transport.write(_response(b"200 OK", _completion(self.model, chat)))

    def _stream(self, tokens: int, chat: bool, interval: float) -> None:
        assert self.transport is not None
        head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n")
        delta = ({"delta": {"content": "x"}, "index": 0, "finish_reason": None} if chat
                 else {"text": "x", "index": 0, "finish_reason": None})
        event = b"data: " + orjson.dumps({"id": "stub", "object": "chat.completion.chunk",
                                           "model": self.model, "choices": [delta]}) + b"\n\n"
        done = b"data: [DONE]\n\n"
        chunk = f"{len(event):x}\r\n".encode() + event + b"\r\n"
        tail = f"{len(done):x}\r\n".encode() + done + b"\r\n0\r\n\r\n"
        if interval <= 0:
            self.transport.write(b"".join([head, chunk * tokens, tail]))
            return
        self.transport.write(head)
        transport, loop = self.transport, asyncio.get_running_loop()

        def tick(left: int) -> None:
            if transport.is_closing():
                return
            if left == 0:
                transport.write(tail)
                return
            transport.write(chunk)
            loop.call_later(interval, tick, left - 1)

        loop.call_later(interval, tick, tokens)


async def serve(host: str, port: int, model: str) -> None:
    key = os.environ.get("LLAMA_API_KEY")
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Stub(model, key.encode() if key else None),
                                      host, port, backlog=1024)
    print(f"stub listening on {host}:{port}", file=sys.stderr, flush=True)
    await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--alias", default="stub")
    args, _ = parser.parse_known_args()  # every other llama-server flag is accepted and ignored
    uvloop.run(serve(args.host, args.port, args.alias))


if __name__ == "__main__":
    main()
