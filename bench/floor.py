"""The floor the gateway's design allows, measured beside it: Hypercorn configured as the
gateway configures it, serving a bare ASGI app.

``fixed`` answers every request with a constant body (what Hypercorn and h11 cost alone);
``relay`` reads the body and relays it to the upstream through :mod:`gateway.upstream`, as
the gateway does, with no middleware, scheduler, metrics or validation (what one upstream
hop adds). The gateway's own layers are what it adds over ``relay``.

    .venv/bin/python -m bench.floor fixed|relay --port PORT [--upstream PORT]
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import uvloop
from hypercorn.asyncio import serve
from hypercorn.config import Config
from starlette.types import Receive, Scope, Send

from gateway.upstream import UpstreamPool

_ANSWER = (b'{"id":"floor","object":"chat.completion","model":"m","choices":[{"index":0,'
           b'"message":{"role":"assistant","content":"hi"},"finish_reason":"length"}],'
           b'"usage":{"prompt_tokens":9,"completion_tokens":1,"total_tokens":10}}')


def make_app(mode: str, upstream: int | None) -> object:
    pool: list[UpstreamPool] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        status, answer = 200, _ANSWER
        if mode == "relay" and scope["path"] != "/health":
            assert upstream is not None
            if not pool:
                pool.append(UpstreamPool())
            headers = [(b"Content-Type", b"application/json")]
            headers += [(b"Authorization", value) for name, value in scope["headers"]
                        if name == b"authorization"]  # for a runner that wants its key
            response = await pool[0].request(
                "127.0.0.1", upstream, b"POST", scope["raw_path"], headers, body, limit=64)
            try:
                answer = await response.read()
                status = response.status
            finally:
                response.release()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(answer)).encode())]})
        await send({"type": "http.response.body", "body": answer})

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["fixed", "relay"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", type=int)
    args = parser.parse_args()
    config = Config()
    config.bind = [f"127.0.0.1:{args.port}"]
    # As gateway.cli configures it, so the two differ only in the app.
    config.accesslog = None
    config.include_server_header = False
    config.include_date_header = False
    config.keep_alive_max_requests = 1 << 30
    stop = asyncio.Event()

    async def run() -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await serve(make_app(args.mode, args.upstream), config,  # type: ignore[arg-type]
                    shutdown_trigger=stop.wait)

    uvloop.run(run())


if __name__ == "__main__":
    main()
