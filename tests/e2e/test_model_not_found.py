"""A name that names nothing servable gets one answer on every route that takes a model,
in each route's API shape: the same 404, message and code."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.server import Served, start_fake_server

HI = [{"role": "user", "content": "hi"}]
MESSAGE = "model 'nosuch:1b' not found"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, fake_runner: Path) -> Iterator[Served]:
    server = start_fake_server(tmp_path_factory.mktemp("not-found"), fake_runner, {"fake": {}})
    yield server
    server.stop()


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/v1/chat/completions", {"model": "nosuch:1b", "messages": HI}),
    ("GET", "/v1/models/nosuch:1b", None),
    ("POST", "/api/unload", {"model": "nosuch:1b"}),
])
def test_openai_shaped_routes_and_unload(served: Served, method: str, path: str,
                                         body: dict[str, Any] | None) -> None:
    answer = httpx.request(method, served.url + path, json=body, timeout=10)
    assert answer.status_code == 404
    if path.startswith("/api/"):
        assert answer.json() == {"error": MESSAGE, "code": "model_not_found"}
    else:
        error = answer.json()["error"]
        assert (error["message"], error["code"], error["param"]) == (
            MESSAGE, "model_not_found", "model")


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/api/show", {"model": "nosuch:1b"}),
    ("DELETE", "/api/delete", {"model": "nosuch:1b"}),
    ("POST", "/api/chat", {"model": "nosuch:1b", "messages": HI, "stream": False}),
])
def test_ollama_routes(served: Served, method: str, path: str, body: dict[str, Any]) -> None:
    answer = httpx.request(method, served.url + path, json=body, timeout=10)
    assert answer.status_code == 404
    assert answer.json() == {"error": MESSAGE, "code": "model_not_found"}


def test_anthropic_route(served: Served) -> None:
    answer = httpx.post(f"{served.url}/v1/messages", timeout=10,
                        json={"model": "nosuch:1b", "messages": HI, "max_tokens": 5})
    assert answer.status_code == 404
    assert answer.json() == {"type": "error",
                             "error": {"type": "not_found_error", "message": MESSAGE}}
