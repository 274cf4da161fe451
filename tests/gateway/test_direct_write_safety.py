"""The direct-write relay fails safe: internals it cannot find mean the ASGI path with one
line at start, the path taken is counted in /metrics, and no middleware that changes bodies
can sit where direct writes would bypass it."""

from __future__ import annotations

import textwrap
from pathlib import Path

import httpx
import pytest
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway import direct_write
from gateway.app import create_app
from runner.settings import Settings
from tests.e2e.server import Served, start_fake_server

HI = [{"role": "user", "content": "hi"}]


def _writes(served: Served) -> dict[str, float]:
    found = {}
    for line in httpx.get(f"{served.url}/metrics", timeout=10).text.splitlines():
        if line.startswith("switchboard_relay_writes_total{"):
            path = line.split('path="', 1)[1].split('"', 1)[0]
            found[path] = float(line.rsplit(" ", 1)[1])
    return found


def _stream(served: Served) -> list[str]:
    with httpx.stream("POST", f"{served.url}/v1/chat/completions", timeout=30,
                      json={"model": "fake", "messages": HI, "stream": True}) as reply:
        return [line for line in reply.iter_lines() if line]


def test_under_switchboard_serve_streams_take_the_direct_path(tmp_path: Path,
                                                               fake_runner: Path) -> None:
    served = start_fake_server(tmp_path, fake_runner, {"fake": {}})
    try:
        lines = _stream(served)
        assert lines[-1] == "data: [DONE]"
        writes = _writes(served)
        assert writes.get("direct", 0) >= len(lines) - 2, writes  # head and end go via ASGI
        assert "direct writes to clients on" in served.log_text()
    finally:
        served.stop()


def test_internals_that_moved_mean_the_asgi_path_and_one_line_at_start(
        tmp_path: Path, fake_runner: Path) -> None:
    # A sitecustomize that renames h11's ChunkedWriter, as a release might: h11 itself
    # still works (its writers are looked up through a table), the name we import is gone.
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent("""
        import h11._writers

        h11._writers.RenamedChunkedWriter = h11._writers.ChunkedWriter
        del h11._writers.ChunkedWriter
    """))
    served = start_fake_server(tmp_path, fake_runner, {"fake": {}},
                               {"PYTHONPATH": str(site)})
    try:
        lines = _stream(served)
        assert lines[-1] == "data: [DONE]"
        writes = _writes(served)
        assert writes.get("direct", 0) == 0 and writes.get("asgi", 0) >= 3, writes
        log = served.log_text()
        assert log.count("direct writes off") == 1 and "ChunkedWriter" in log
        assert "Traceback" not in log
    finally:
        served.stop()


def test_without_the_internals_no_writer_or_closer_is_offered(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(direct_write, "UNAVAILABLE", "ImportError: moved")
    assert direct_write.chunked_writer({"type": "http"}) is None
    assert direct_write.client_closer({"type": "http"}) is None
    assert "off" in direct_write.describe()


def test_a_body_changing_middleware_inside_the_direct_writes_is_refused() -> None:
    with pytest.raises(ValueError, match="GZipMiddleware would sit inside"):
        create_app(Settings(), middleware=[Middleware(GZipMiddleware)])


class _Tagging:
    preserves_bodies = True  # adds a header, leaves bodies alone

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


def test_a_middleware_that_says_it_preserves_bodies_is_placed() -> None:
    app = create_app(Settings(), middleware=[Middleware(_Tagging)])
    assert any(getattr(entry, "cls", None) is _Tagging for entry in app.user_middleware)
