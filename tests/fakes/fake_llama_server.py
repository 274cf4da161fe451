#!/usr/bin/env python3
"""A stand-in for llama-server that misbehaves on purpose (fault injection only).

Accepts llama-server's flags and its own ``--fake-delay SECONDS`` (a slow load),
``--fake-chunk-delay SECONDS`` (the pause between streamed chunks), ``--fake-silent`` (no
"model loaded" line once it serves) and ``--fake-mode``:
  ok               healthy; canned chat completions, streamed in 3 chunks
  exit             prints an error and exits 3 at once
  hang             /health answers 503 forever
  crash-mid-stream sends one chunk of a stream, then dies with SIGKILL
  error-line       sends one chunk, then an old-style 'error: {...}' line, then ends
  hang-mid-stream  sends one chunk of a stream, then nothing, while /health still answers;
                   touches the --fake-marker file once the client closes the connection
  garbled          answers 200 with a body that is not JSON, and streams events that are not
  flood            streams 20,000 events of 1 kB, content "0 ", "1 ", ..., as fast as it can
  endless          streams 1 kB events, as fast as it can, until the client goes; then
                   touches the --fake-marker file
  huge             answers --fake-size bytes of content (chunked, with no Content-Length);
                   streamed, one small event, then one event that large in 64 KiB pieces;
                   touches the --fake-marker file if the client goes before the end
  bind-fail-once   the first launch fails like llama-server does when its port was taken
                   (remembered by a marker file given with --fake-marker), later ones serve
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import select
import signal
import socket
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--alias", default="fake")
    parser.add_argument("--fake-mode", default="ok")
    parser.add_argument("--fake-marker")
    parser.add_argument("--fake-delay", type=float, default=0.0,
                        help="seconds of 'loading' before it listens")
    parser.add_argument("--fake-chunk-delay", type=float, default=0.01,
                        help="seconds between the chunks of a stream")
    parser.add_argument("--fake-size", type=int, default=8 << 20,
                        help="bytes of content in the huge mode's answers")
    parser.add_argument("--fake-silent", action="store_true",
                        help="never print llama-server's 'model loaded' line")
    args, _ = parser.parse_known_args()
    print(f"fake llama-server mode={args.fake_mode} port={args.port}", flush=True)
    if args.fake_mode == "exit":
        print("error: failed to load model 'nowhere.gguf'", flush=True)
        sys.exit(3)
    if args.fake_mode == "bind-fail-once" and not Path(args.fake_marker).exists():
        Path(args.fake_marker).touch()
        print(f"couldn't bind HTTP server socket, hostname: 127.0.0.1, port: {args.port}",
              flush=True)
        sys.exit(1)
    key = os.environ.get("LLAMA_API_KEY", "")
    time.sleep(args.fake_delay)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # else Nagle + delayed ACK stall each reply 40 ms

        def log_message(self, *_: object) -> None:
            pass

        def _json(self, status: int, obj: object) -> None:
            body = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _chunk(self, data: bytes) -> None:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

        def _unbounded(self, base: dict[str, object], stream: bool) -> None:
            """The huge and endless modes' answers, chunked."""
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream" if stream
                             else "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if args.fake_mode == "endless" and not stream:
                self._chunk(json.dumps({**base, "object": "chat.completion", "choices": [
                    {"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "fake reply"}}]}).encode())
            elif args.fake_mode == "endless":
                for i in itertools.count():
                    event = {**base, "object": "chat.completion.chunk", "pad": "." * 1000,
                             "choices": [
                        {"index": 0, "finish_reason": None, "delta": {"content": f"{i} "}}]}
                    self._chunk(f"data: {json.dumps(event, separators=(',', ':'))}\n\n"
                                .encode())
            else:
                if stream:
                    first = {**base, "object": "chat.completion.chunk", "choices": [
                        {"index": 0, "finish_reason": None, "delta": {"content": "fake "}}]}
                    self._chunk(f"data: {json.dumps(first)}\n\n".encode())
                    self.wfile.flush()
                    head, tail = b'data: {"choices":[{"delta":{"content":"', b'"}}]}\n\n'
                else:
                    head = (b'{"object":"chat.completion","choices":[{"index":0,'
                            b'"message":{"role":"assistant","content":"')
                    tail = b'"}}]}'
                self._chunk(head)
                piece = b"x" * 65536
                for _ in range(args.fake_size // len(piece)):
                    self._chunk(piece)
                self._chunk(tail)
                if stream:
                    self._chunk(b"data: [DONE]\n\n")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

        def do_GET(self) -> None:
            if self.path == "/health":
                if args.fake_mode == "hang":
                    self._json(503, {"error": {"code": 503, "message": "Loading model"}})
                else:
                    self._json(200, {"status": "ok"})
            else:
                self._json(404, {"error": {"code": 404, "message": "not found"}})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.headers.get("Authorization") != f"Bearer {key}":
                self._json(401, {"error": {"code": 401, "message": "Invalid API Key",
                                           "type": "authentication_error"}})
                return
            base = {"id": "fake", "created": 0, "model": args.alias}
            if self.path.startswith("/slots/"):  # as llama-server answers without a save path
                self._json(501, {"error": {"code": 501, "message": "This server does not "
                                           "support slots action.", "type": "not_supported_error"}})
                return
            if args.fake_mode == "garbled" and not body.get("stream"):
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "9")
                self.end_headers()
                self.wfile.write(b"not json!")
                return
            if args.fake_mode in ("huge", "endless"):
                try:
                    self._unbounded(base, bool(body.get("stream")))
                except (BrokenPipeError, ConnectionResetError):
                    if args.fake_marker:  # the client went before the end
                        Path(args.fake_marker).touch()
                return
            if not body.get("stream"):
                self._json(200, {**base, "object": "chat.completion", "choices": [
                    {"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "fake reply"}}]})
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if args.fake_mode == "flood":  # more than the socket buffers hold unread
                for i in range(20_000):
                    event = {**base, "object": "chat.completion.chunk", "pad": "." * 1000,
                             "choices": [
                        {"index": 0, "finish_reason": None, "delta": {"content": f"{i} "}}]}
                    data = f"data: {json.dumps(event, separators=(',', ':'))}\n\n".encode()
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                done = b"data: [DONE]\n\n"
                self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))
                return
            for i, word in enumerate(["fake ", "stream ", "reply"]):
                event = {**base, "object": "chat.completion.chunk", "choices": [
                    {"index": 0, "finish_reason": None, "delta": {"content": word}}]}
                data = f"data: {json.dumps(event, separators=(',', ':'))}\n\n".encode()
                if args.fake_mode == "garbled":
                    data = b"data: {not json\n\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
                if args.fake_mode == "error-line" and i == 0:
                    line = b'error: {"code": 500, "message": "boom", "type": "server_error"}\n\n'
                    self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(line), line))
                    return
                if args.fake_mode == "hang-mid-stream" and i == 0:
                    # Silent until the client closes the connection, which the marker
                    # file then records.
                    while not select.select([self.connection], [], [], 0.05)[0]:
                        pass
                    if self.connection.recv(1, socket.MSG_PEEK) == b"" and args.fake_marker:
                        Path(args.fake_marker).touch()
                    return
                if args.fake_mode == "crash-mid-stream" and i == 0:
                    time.sleep(0.05)
                    os.kill(os.getpid(), signal.SIGKILL)
                time.sleep(args.fake_chunk_delay)
            done = b"data: [DONE]\n\n"
            self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    if args.fake_mode != "hang" and not args.fake_silent:
        print("srv  llama_server: model loaded", flush=True)  # as llama-server says it
    server.serve_forever()


if __name__ == "__main__":
    main()
