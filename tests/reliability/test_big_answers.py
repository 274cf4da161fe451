"""A runner's answer larger than SWITCHBOARD_MAX_ANSWER_BYTES, whole or as one streamed event:
the client gets a clean error in its API's shape naming the limit, the runner's connection is
closed (llama-server stops generating), and the gateway never holds the answer. On the fake
runner, which sends 64 MiB where the limit is 1 MiB."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import orjson
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.e2e.server import Served, start_fake_server, wait_until

HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
LIMIT = "SWITCHBOARD_MAX_ANSWER_BYTES (1 MiB)"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, fake_runner: Path) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("big")
    models = {"huge": {"args": ["--fake-mode", "huge", "--fake-size", str(64 << 20),
                                "--fake-marker", str(root / "huge-left")]}}
    server = start_fake_server(root, fake_runner, models, {
        "SWITCHBOARD_MAX_ANSWER_BYTES": "1MiB"})
    yield server
    server.stop()


@pytest.fixture
def runner_left(served: Served) -> Iterator[Path]:
    """The marker the fake runner touches when the gateway closes its connection early."""
    marker = served.tmpdir.parent / "huge-left"
    marker.unlink(missing_ok=True)
    yield marker


def _memory(served: Served, field: str) -> int:
    """VmRSS (now) or VmHWM (the peak so far) of the gateway, in bytes."""
    for line in Path(f"/proc/{served.proc.pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field}")


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
def test_an_answer_past_the_limit_is_a_502_naming_it(served: Served, runner_left: Path,
                                                     path: str) -> None:
    before = _memory(served, "VmRSS")
    response = httpx.post(served.url + path, timeout=30,
                          json={"model": "huge", "messages": HI, "stream": False})
    assert response.status_code == 502, response.text[:200]
    error = response.json()["error"]
    message = error if path == "/api/chat" else error["message"]
    assert "an answer larger than " + LIMIT in message
    assert wait_until(runner_left.exists, 5), "the runner's connection was not closed"
    # 64 MiB came at it, which a gateway reading it whole held twice over at its peak.
    assert _memory(served, "VmHWM") - before < 16 << 20


def test_a_streamed_event_past_the_limit_ends_the_stream_with_an_error_event(
        served: Served, runner_left: Path) -> None:
    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="x", max_retries=0)
    received: list[str] = []
    with pytest.raises(openai.APIError, match=r"an event larger than .*\(1 MiB\)"):
        for chunk in client.chat.completions.create(model="huge", messages=HI, stream=True):
            received.append(chunk.choices[0].delta.content or "")
    # The event before it came whole, and nothing of the oversized one did.
    assert received == ["fake "]
    assert wait_until(runner_left.exists, 5), "the runner's connection was not closed"


def test_a_translated_stream_with_an_event_past_the_limit_ends_with_its_error(
        served: Served, runner_left: Path) -> None:
    with httpx.stream("POST", f"{served.url}/api/chat", timeout=30,
                      json={"model": "huge", "messages": HI}) as response:
        lines = [line for line in response.iter_lines() if line]
    assert response.status_code == 200
    assert orjson.loads(lines[0])["message"]["content"] == "fake "
    assert "an event larger than " + LIMIT in orjson.loads(lines[-1])["error"]
    assert len(lines) == 2
    assert wait_until(runner_left.exists, 5), "the runner's connection was not closed"
    assert httpx.get(f"{served.url}/health", timeout=5).status_code == 200
    assert "Traceback" not in served.log_text()
