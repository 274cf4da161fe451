"""A client that gives up before its model is ready leaves the queue then (fake runner: what is
under test is the gateway's bookkeeping, not the model)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.server import Served, start_fake_server, wait_until

SLOW_LOAD = 15.0  # seconds the model takes to become ready: far longer than the test waits


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, fake_runner: Path) -> Iterator[Served]:
    server = start_fake_server(tmp_path_factory.mktemp("leaves"), fake_runner,
                               {"slow": {"args": ["--fake-delay", str(SLOW_LOAD)]}})
    yield server
    server.stop()


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_leaves_while_its_model_loads_is_dropped_before_the_load_ends(
        served: Served, stream: bool) -> None:
    body = {"model": "slow", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{served.url}/v1/chat/completions", json=body, timeout=0.5)
    left = time.monotonic()
    assert wait_until(lambda: served.log_text().count("client left; cancelled its request "
                                                      "for slow") >= 1 + stream, 5.0), \
        "the gateway kept a request whose client was gone"
    assert time.monotonic() - left < SLOW_LOAD / 2
    assert "runner start: model=slow" not in served.log_text(), "noticed only after the load"
    assert wait_until(lambda: served.log_text().count('"POST /v1/chat/completions" 499')
                      >= 1 + stream, 5.0)
