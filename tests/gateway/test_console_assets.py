"""The console's chart library is fetched from an npm registry (here one on 127.0.0.1) by its
real tarball URL, kept only if it matches the pinned sha512, and cached so a second set-up
downloads nothing."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from gateway import console_assets

REAL = Path.home() / ".cache" / "switchboard" / "npm" / (
    f"{console_assets.PACKAGE}-{console_assets.VERSION}.tgz")


class _Registry:
    def __init__(self, body: bytes) -> None:
        self.body = body
        self.paths: list[str] = []


@pytest.fixture
def registry() -> Iterator[tuple[str, _Registry]]:
    if not REAL.is_file():
        pytest.skip("no uPlot tarball in the build cache: make console-assets fetches it")
    served = _Registry(REAL.read_bytes())

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            served.paths.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(served.body)))
            self.end_headers()
            self.wfile.write(served.body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", served
    server.shutdown()
    server.server_close()


def test_the_pinned_tarball_is_fetched_verified_extracted_and_cached(
        registry: tuple[str, _Registry], tmp_path: Path) -> None:
    url, served = registry
    vendor = console_assets.fetch(tmp_path / "cache", tmp_path / "vendor", url)
    assert served.paths == [f"/uplot/-/uplot-{console_assets.VERSION}.tgz"]
    assert console_assets.present(vendor)
    assert b"uPlot" in (vendor / "uPlot.iife.min.js").read_bytes()
    (vendor / "uPlot.iife.min.js").unlink()
    console_assets.fetch(tmp_path / "cache", vendor, url)  # from the cache this time
    assert len(served.paths) == 1 and console_assets.present(vendor)


def test_a_tarball_that_does_not_match_the_pin_is_refused(
        registry: tuple[str, _Registry], tmp_path: Path) -> None:
    url, served = registry
    served.body = served.body[:-1] + bytes([served.body[-1] ^ 1])
    with pytest.raises(console_assets.AssetError, match="expected sha512-"):
        console_assets.fetch(tmp_path / "cache", tmp_path / "vendor", url)
    assert not (tmp_path / "vendor").exists() and not (tmp_path / "cache" / "npm").exists()
