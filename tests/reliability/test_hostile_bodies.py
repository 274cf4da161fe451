"""Bodies built to hurt: deep nesting, invalid UTF-8, absurd numbers and sizes, on every
family's route. Each gets a clean 4xx in its family's shape, and the gateway stays healthy.
On the fake runner: what is under test is the gateway, not the model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.e2e.server import Served, start_fake_server
from tests.e2e.test_fuzz import assert_well_shaped

ROUTES = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses",
          "/v1/messages", "/v1/rerank", "/tokenize", "/api/chat", "/api/generate", "/api/embed",
          "/api/pull", "/api/show", "/api/unload"]
HI = [{"role": "user", "content": "hi"}]
# These read only the model name: a well-named body with absurd sampling numbers is fine there.
NOT_READING_NUMBERS = {"/api/pull", "/api/show", "/api/unload"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, fake_runner: Path) -> Iterator[Served]:
    server = start_fake_server(tmp_path_factory.mktemp("hostile"), fake_runner, {"fake": {}}, {
        "SWITCHBOARD_MAX_BODY_BYTES": str(1 << 20), "SWITCHBOARD_LOG_LEVEL": "warning",
        # A pull of "fake" must not leave this machine: the default registry is a closed port.
        "SWITCHBOARD_REGISTRY": "127.0.0.1:9"})
    yield server
    server.stop()


BODIES = {
    "deep nesting": b'{"model": "fake", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "invalid UTF-8": b'{"model": "fake\xff\xfe", "messages": '
                     b'[{"role": "user", "content": "\xc3"}]}',
    "NUL in the model": orjson.dumps({"model": "fa\x00ke", "messages": HI, "prompt": "x"}),
    "huge integer": b'{"model": "fake", "max_tokens": 1' + b"0" * 400 + b', "messages": []}',
    "absurd numbers": orjson.dumps({"model": "fake", "messages": HI, "n": 10**6,
                                    "max_tokens": -(2**63), "keep_alive": "9" * 300 + "h",
                                    "options": {"num_ctx": 2**62}, "top_n": 0}),
    "wrong types": orjson.dumps({"model": ["fake"], "messages": {"role": "user"},
                                 "stream": "yes", "keep_alive": True}),
    "not an object": b"[1, 2, 3]",
    "empty": b"",
}


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("kind", sorted(BODIES))
def test_hostile_bodies_get_clean_4xx_in_the_family_shape(served: Served, route: str,
                                                          kind: str) -> None:
    response = httpx.post(served.url + route, content=BODIES[kind], timeout=30,
                          headers={"content-type": "application/json"})
    assert response.status_code < 500, (route, kind, response.status_code, response.text)
    if kind != "absurd numbers" or route not in NOT_READING_NUMBERS:
        assert response.status_code >= 400, (route, kind, response.text)
    assert_well_shaped(response, route)
    assert "Traceback" not in response.text


@pytest.mark.parametrize("route", ROUTES)
def test_a_body_past_the_limit_is_a_413_before_it_is_read(served: Served, route: str) -> None:
    big = b'{"model": "fake", "messages": [{"role": "user", "content": "' + b"x" * (2 << 20)
    response = httpx.post(served.url + route, content=big + b'"}]}', timeout=30)
    assert response.status_code == 413
    assert_well_shaped(response, route)


def test_the_gateway_is_healthy_after_all_of_it(served: Served) -> None:
    assert httpx.get(f"{served.url}/health", timeout=10).status_code == 200
    ok = httpx.post(f"{served.url}/v1/chat/completions", timeout=30,
                    json={"model": "fake", "messages": HI})
    assert ok.status_code == 200
