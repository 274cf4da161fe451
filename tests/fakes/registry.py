"""An OCI registry (Ollama's protocol) on 127.0.0.1 that misbehaves on request.

Serves ``/v2/<namespace>/<model>/manifests/<tag>``, ``/v2/<namespace>/<model>/blobs/<digest>``
(HEAD and ranged GET) and plain files under ``/files/<name>``. Faults apply to blob and file
GETs, each to the first ``times`` requests whose range starts at ``start`` (or any) and,
if the fault names one, whose path is ``path``:

- ``status``: answer with that HTTP status instead
- ``stall``: send ``after`` bytes, then go silent (until the registry stops)
- ``drop``: send ``after`` bytes, then close the connection
- ``corrupt``: flip the first byte of what is sent

Other knobs: ``redirect_to`` (another registry: blob GETs answer 307 there), ``rate`` (bytes/s,
shared by all connections, for tests that
kill a pull midway), ``token`` (demand Docker's bearer-token flow). Counts what
it sent, so tests can prove a resume fetched less than the whole file. Threaded: the tests'
event loop, the CLI under test and this server must not share one.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson

MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MODEL = "application/vnd.ollama.image.model"
_BLOB = re.compile(r"^/v2/([^/]+)/([^/]+)/blobs/(sha256:[0-9a-f]{64})$")
_MANIFEST = re.compile(r"^/v2/([^/]+)/([^/]+)/manifests/([^/]+)$")
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")
_CHUNK = 256 << 10


@dataclass
class Fault:
    kind: str  # status | stall | drop | corrupt
    start: int | None = None  # range start to match; None: any request
    times: int = 1
    status: int = 500
    after: int = 0  # bytes sent before stalling or dropping
    path: str | None = None  # only requests for this path; None: any


@dataclass
class Blob:
    path: Path
    digest: str
    size: int


@dataclass
class FakeRegistry:
    blobs: dict[str, Blob] = field(default_factory=dict)
    manifests: dict[tuple[str, str, str], bytes] = field(default_factory=dict)
    files: dict[str, Blob] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    redirect_to: FakeRegistry | None = None
    rate: float | None = None
    token: str | None = None
    bytes_sent: int = 0
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    port: int = 0
    _server: _Server | None = None
    _stopping: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _free_at: float = 0.0

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    # -- content ----------------------------------------------------------------------------

    def add_blob(self, path: Path, digest: str | None = None) -> Blob:
        """Serve ``path`` under its sha256 (or ``digest``, to serve a lie)."""
        if digest is None:
            digest = "sha256:" + file_sha256(path)
        blob = Blob(path, digest, path.stat().st_size)
        self.blobs[digest] = blob
        return blob

    def add_model(self, repository: str, tag: str, layers: list[tuple[str, Blob]]) -> bytes:
        namespace, model = repository.split("/")
        manifest = orjson.dumps({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "layers": [{"mediaType": media, "digest": blob.digest, "size": blob.size}
                       for media, blob in layers],
        })
        self.manifests[(namespace, model, tag)] = manifest
        return manifest

    def add_file(self, name: str, path: Path) -> str:
        self.files[name] = Blob(path, "", path.stat().st_size)
        return f"{self.url}/files/{name}"

    def take_fault(self, start: int, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.times > 0 and (fault.start is None or fault.start == start) and (
                    fault.path is None or fault.path == path
                ):
                    fault.times -= 1
                    return fault
        return None

    def ranged_bytes(self) -> int:
        """Bytes asked for by the ranged GETs recorded so far: what a resume fetched."""
        total = 0
        for method, _, header in list(self.requests):
            if method == "GET" and header:
                start, end = header.removeprefix("bytes=").split("-")
                total += int(end) - int(start) + 1
        return total

    def count(self, n: int) -> None:
        with self._lock:
            self.bytes_sent += n

    def throttle(self, n: int) -> None:
        """Sleep so that all connections together send at most ``rate`` bytes/s."""
        if self.rate is None:
            return
        with self._lock:
            now = time.monotonic()
            self._free_at = max(self._free_at, now) + n / self.rate
            wait = self._free_at - now
        if wait > 0:
            time.sleep(wait)

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> FakeRegistry:
        registry = self

        class Handler(_Handler):
            owner = registry

        server = _Server(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        self.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # releases stalled handlers
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> FakeRegistry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that hang up mid-body are what these tests are about


def checkpointed(partial_dir: Path) -> int:
    """What a pull's own checkpoint beside its partial says it has (what a resume skips)."""
    for state in partial_dir.glob("*.json"):
        try:
            return sum(c for _, _, c in orjson.loads(state.read_bytes())["parts"])
        except (OSError, orjson.JSONDecodeError):
            pass
    return 0


def file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class _Handler(BaseHTTPRequestHandler):
    owner: FakeRegistry
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _plain(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
               content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _authorised(self) -> bool:
        token = self.owner.token
        if token is None or self.headers.get("Authorization") == f"Bearer {token}":
            return True
        realm = f"{self.owner.url}/token"
        self._plain(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}', {
            "WWW-Authenticate": f'Bearer realm="{realm}",service="fake",scope="repository:x:pull"'
        })
        return False

    def do_HEAD(self) -> None:
        self._route()

    def do_GET(self) -> None:
        self._route()

    def _route(self) -> None:
        owner = self.owner
        owner.requests.append((self.command, self.path, self.headers.get("Range")))
        try:
            if self.path.startswith("/token"):
                self._plain(200, orjson.dumps({"token": owner.token}))
                return
            if (match := _MANIFEST.match(self.path)) is not None:
                if not self._authorised():
                    return
                manifest = owner.manifests.get(match.groups())  # type: ignore[arg-type]
                if manifest is None:
                    self._plain(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}')
                else:
                    self._plain(200, manifest, content_type=MANIFEST)
                return
            if (match := _BLOB.match(self.path)) is not None:
                if not self._authorised():
                    return
                if owner.redirect_to is not None:
                    self._plain(307, b"", {"Location": owner.redirect_to.url + self.path})
                    return
                self._send(owner.blobs.get(match.group(3)))
                return
            if self.path.startswith("/files/"):
                self._send(owner.files.get(self.path.removeprefix("/files/")))
                return
            self._plain(404, b"{}")
        except (ConnectionError, TimeoutError):
            self.close_connection = True

    def _send(self, blob: Blob | None) -> None:
        if blob is None:
            self._plain(404, b'{"errors":[{"code":"BLOB_UNKNOWN"}]}')
            return
        start, end = 0, blob.size - 1
        ranged = self.headers.get("Range")
        if ranged is not None:
            match = _RANGE.match(ranged)
            if match is None:
                self._plain(416, b"")
                return
            start = int(match.group(1))
            end = min(int(match.group(2) or blob.size - 1), blob.size - 1)
        fault = self.owner.take_fault(start, self.path) if self.command == "GET" else None
        if fault is not None and fault.kind == "status":
            self._plain(fault.status, b'{"errors":[{"code":"INJECTED"}]}')
            return
        length = end - start + 1
        self.send_response(206 if ranged is not None else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(length))
        if ranged is not None:
            self.send_header("Content-Range", f"bytes {start}-{end}/{blob.size}")
        self.end_headers()
        if self.command == "HEAD":
            return
        self._body(blob.path, start, length, fault)

    def _body(self, path: Path, start: int, length: int, fault: Fault | None) -> None:
        owner = self.owner
        limit = fault.after if fault is not None and fault.kind in ("stall", "drop") else length
        sent = 0
        with path.open("rb") as f:
            if fault is None and owner.rate is None:
                self.wfile.flush()
                sent = self.connection.sendfile(f, start, length)  # the fast path
                owner.count(sent)
                return
            f.seek(start)
            while sent < min(limit, length):
                data = f.read(min(_CHUNK, min(limit, length) - sent))
                if fault is not None and fault.kind == "corrupt" and sent == 0:
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                owner.throttle(len(data))
                self.wfile.write(data)
                sent += len(data)
                owner.count(len(data))
                if owner._stopping.is_set():
                    break
        if sent < length:
            self.wfile.flush()
            if fault is not None and fault.kind == "stall":
                owner._stopping.wait(120)
            self.close_connection = True


def main() -> None:
    """Serve one file as ``library/<name>:latest`` in a process of its own (for benchmarks:
    in the measuring process it would compete for the GIL); prints the port, then serves."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("file", type=Path)
    parser.add_argument("--name", default="bench")
    parser.add_argument("--rate", type=float, help="bytes/s for all connections together")
    args = parser.parse_args()
    registry = FakeRegistry(rate=args.rate).start()
    registry.add_model(f"library/{args.name}", "latest",
                       [(MODEL, registry.add_blob(args.file))])
    print(registry.port, flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
