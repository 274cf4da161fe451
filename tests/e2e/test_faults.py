"""Runner faults seen through the gateway, injected with the fake runner."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import orjson
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.e2e.server import Served, start_fake_server, wait_until

HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, fake_runner: Path) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("faults")
    models = {
        "crashy": {"args": ["--fake-mode", "crash-mid-stream"]},
        "broken": {"args": ["--fake-mode", "exit"]},
        "erring": {"args": ["--fake-mode", "error-line"]},
        "garbled": {"args": ["--fake-mode", "garbled"]},
        "flood": {"args": ["--fake-mode", "flood"]},
        "stuck": {"args": ["--fake-mode", "hang-mid-stream",
                           "--fake-marker", str(root / "stuck-left")]},
    }
    server = start_fake_server(root, fake_runner, models,
                               {"SWITCHBOARD_STREAM_IDLE_TIMEOUT": "1s"})
    yield server
    server.stop()


def test_runner_crash_mid_stream_ends_with_an_error_event_then_reloads(served: Served) -> None:
    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="x", max_retries=0)
    received: list[str] = []
    with pytest.raises(openai.APIError, match="failed mid-stream"):
        for chunk in client.chat.completions.create(model="crashy", messages=HI, stream=True):
            received.append(chunk.choices[0].delta.content or "")
    assert received == ["fake "]
    # The crashed runner was reaped and left the loaded set: the next request loads anew.
    reply = httpx.post(f"{served.url}/v1/chat/completions",
                       json={"model": "crashy", "messages": HI}, timeout=30)
    assert reply.status_code == 200
    assert reply.json()["choices"][0]["message"]["content"] == "fake reply"
    assert served.log_text().count("runner start: model=crashy") == 2


def test_runner_silent_mid_stream_is_cut_off_after_the_idle_timeout(served: Served) -> None:
    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="x", max_retries=0)
    received: list[str] = []
    started = time.monotonic()
    with pytest.raises(openai.APIError, match="sent nothing for 1 s"):
        for chunk in client.chat.completions.create(model="stuck", messages=HI, stream=True):
            received.append(chunk.choices[0].delta.content or "")
    waited = time.monotonic() - started
    assert received == ["fake "]
    assert 1.0 <= waited < 5.0
    # The runner's connection was closed, which is what makes llama-server stop generating.
    assert wait_until((served.tmpdir.parent / "stuck-left").exists, 5)
    assert httpx.get(f"{served.url}/health", timeout=5).status_code == 200


def test_runner_that_cannot_load_is_a_clear_503(served: Served) -> None:
    response = httpx.post(f"{served.url}/v1/chat/completions",
                          json={"model": "broken", "messages": HI}, timeout=30)
    assert response.status_code == 503
    error = response.json()["error"]
    assert "failed to load" in error["message"] and "exited with code 3" in error["message"]
    assert "Traceback" not in response.text


def test_old_style_error_line_mid_stream_reaches_the_sdk(served: Served) -> None:
    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.APIError, match="boom"):
        for _ in client.chat.completions.create(model="erring", messages=HI, stream=True):
            pass
    with httpx.stream("POST", f"{served.url}/v1/chat/completions", timeout=30,
                      json={"model": "erring", "messages": HI, "stream": True}) as response:
        lines = [line for line in response.iter_lines() if line]
    assert not any(line.startswith("error:") for line in lines)
    error = next(line for line in lines if '"error"' in line)
    assert error.startswith("data: ") and '"code":null' in error.replace(" ", "")


def test_a_runner_answer_that_cannot_be_translated_is_a_clean_error(served: Served) -> None:
    whole = httpx.post(f"{served.url}/api/chat", timeout=30,
                       json={"model": "garbled", "messages": HI, "stream": False})
    assert whole.status_code == 502
    assert "cannot be translated" in whole.json()["error"]
    with httpx.stream("POST", f"{served.url}/api/chat", timeout=30,
                      json={"model": "garbled", "messages": HI}) as response:
        lines = [line for line in response.iter_lines() if line]
    assert response.status_code == 200
    assert "cannot be translated" in lines[-1] and lines[-1].startswith('{"error"')
    assert httpx.get(f"{served.url}/health", timeout=5).status_code == 200


def test_a_client_that_reads_late_gets_a_flooding_stream_whole_and_in_order(
        served: Served) -> None:
    # 20,000 events (about 23 MB) arrive far faster than this client reads: relayed chunks
    # are written straight to its connection (gateway.direct_write) only while little is unsent,
    # then go through ASGI, which waits for it. Either way none may be lost or reordered.
    body = {"model": "flood", "messages": HI, "stream": True}
    with httpx.stream("POST", f"{served.url}/v1/chat/completions", json=body,
                      timeout=30) as response:
        assert response.status_code == 200
        time.sleep(1.0)  # the gateway's and the kernel's buffers fill meanwhile
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    contents = [orjson.loads(line[6:])["choices"][0]["delta"]["content"] for line in lines[:-1]]
    assert contents == [f"{i} " for i in range(20_000)]
    # The connection is still good for the next request on the same gateway.
    reply = httpx.post(f"{served.url}/v1/chat/completions",
                       json={"model": "flood", "messages": HI}, timeout=30)
    assert reply.json()["choices"][0]["message"]["content"] == "fake reply"
