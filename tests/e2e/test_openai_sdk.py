"""The walking skeleton as a user meets it: the OpenAI SDK against `switchboard serve`."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.e2e.server import Served, cmdline, gemma_models, start_server, wait_until

HI: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Say hello in one short sentence."}
]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, gemma_path: Path,
           real_variants: dict[str, Path]) -> Iterator[Served]:
    server = start_server(tmp_path_factory.mktemp("served"), gemma_models(gemma_path))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(served: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{served.url}/v1", api_key="x", max_retries=0, timeout=120)


def test_openai_sdk_chat_returns_text(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="gemma3:270m", messages=HI, max_tokens=24)
    assert reply.model == "gemma3:270m"
    assert reply.choices[0].message.content
    assert reply.usage is not None and reply.usage.completion_tokens > 0


def test_openai_sdk_chat_streams_chunk_by_chunk(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="gemma3:270m", messages=HI, max_tokens=24, stream=True
    )
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices]
    assert len(chunks) > 3, "a stream must arrive in pieces, not as one body"
    # The base model sometimes answers in whitespace alone: check pieces, not prose.
    assert sum(1 for piece in pieces if piece) > 3
    assert {c.model for c in chunks} == {"gemma3:270m"}


def test_alias_is_echoed_back_as_the_model_the_client_named(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="gemma", messages=HI, max_tokens=4)
    assert reply.model == "gemma"
    stream = client.chat.completions.create(model="gemma", messages=HI, max_tokens=4,
                                            stream=True)
    assert {c.model for c in stream} == {"gemma"}


def test_unknown_model_is_an_openai_404(client: openai.OpenAI, served: Served) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=HI)
    body = info.value.body
    assert isinstance(body, dict) and body["code"] == "model_not_found"
    raw = httpx.post(f"{served.url}/v1/chat/completions",
                     json={"model": "no-such-model", "messages": HI}).json()
    assert set(raw["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [(b"{not json", "not valid JSON"), (b"[]", "JSON object"), (b"", "empty"),
     (b'{"messages": []}', "'model'"), (b'{"model": "gemma3:270m"}', "'messages'"),
     (b'{"model": "gemma3:270m", "messages": [{"role":"user","content":"x"}], "stream": "yes"}',
      "'stream'")],
)
def test_malformed_requests_are_openai_400s(served: Served, body: bytes, fragment: str) -> None:
    response = httpx.post(f"{served.url}/v1/chat/completions", content=body,
                          headers={"content-type": "application/json"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert fragment in error["message"]
    assert error["type"] == "invalid_request_error"


def test_unknown_route_and_method_are_openai_errors(served: Served) -> None:
    missing = httpx.get(f"{served.url}/v1/nothing-here")
    assert missing.status_code == 404 and "error" in missing.json()
    wrong = httpx.get(f"{served.url}/v1/chat/completions")
    assert wrong.status_code == 405 and "error" in wrong.json()


def test_models_lists_the_default_model(client: openai.OpenAI) -> None:
    assert "gemma3:270m" in [m.id for m in client.models.list()]
    assert client.models.retrieve("gemma").id == "gemma"


def test_health_answers_ok(served: Served) -> None:
    assert httpx.get(f"{served.url}/health").json() == {"status": "ok"}


def test_exactly_one_pid_dir_holds_the_server_pid(served: Served) -> None:
    dirs = served.pid_dirs()
    assert len(dirs) == 1
    assert (dirs[0] / "switchboard.pid").read_text() == str(served.proc.pid)


def test_runner_port_refuses_requests_without_its_key(client: openai.OpenAI,
                                                      served: Served) -> None:
    client.chat.completions.create(model="gemma3:270m", messages=HI, max_tokens=1)
    (runner,) = served.runner_pids()
    argv = cmdline(runner)
    port = argv[argv.index("--port") + 1]
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    response = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions",
                          json={"messages": HI, "max_tokens": 1})
    assert response.status_code == 401
    environ = Path(f"/proc/{runner}/environ").read_bytes().split(b"\0")
    assert any(e.startswith(b"LLAMA_API_KEY=") and len(e) > 30 for e in environ)


def test_server_logs_a_line_per_request_and_runner_start(client: openai.OpenAI,
                                                         served: Served) -> None:
    client.models.list()
    log = served.log_text()
    assert '"GET /v1/models" 200' in log
    start_lines = [line for line in log.splitlines() if "runner start:" in line]
    assert len(start_lines) == 1, "the runner loads once and is reused"
    assert "pid=" in start_lines[0] and "variant=cpu" in start_lines[0]
    assert "load=" in start_lines[0]


def _runner_busy(served: Served) -> Callable[[], bool]:
    """Whether the one runner's slot is generating, asked of the runner itself."""
    port, key = served.runner_address()

    def busy() -> bool:
        slots = httpx.get(f"http://127.0.0.1:{port}/slots",
                          headers={"Authorization": f"Bearer {key}"}).json()
        return any(slot["is_processing"] for slot in slots)

    return busy


def test_client_leaving_mid_stream_stops_generation(client: openai.OpenAI,
                                                    served: Served) -> None:
    client.chat.completions.create(model="gemma3:270m", messages=HI, max_tokens=1)
    busy = _runner_busy(served)

    body = {"model": "gemma3:270m", "messages": HI, "max_tokens": 2000, "stream": True}
    with httpx.stream("POST", f"{served.url}/v1/chat/completions", json=body,
                      timeout=60) as response:
        lines = response.iter_lines()
        for _ in range(5):
            next(lines)
        assert busy()
    left = time.monotonic()
    assert wait_until(lambda: not busy(), 1.0), "runner still generating 1 s after the client left"
    assert time.monotonic() - left < 1.0


def test_client_leaving_a_non_streamed_request_stops_generation(client: openai.OpenAI,
                                                                 served: Served) -> None:
    """Without streaming, llama-server sends nothing until it is done: the client's leaving
    must be noticed while the gateway still waits for the response head."""
    client.chat.completions.create(model="gemma3:270m", messages=HI, max_tokens=1)
    busy = _runner_busy(served)

    body = {"model": "gemma3:270m", "messages": HI, "max_tokens": 2000, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{served.url}/v1/chat/completions", json=body, timeout=1.5)
    # llama-server checks a non-streamed request's connection when its result queue has been
    # quiet for a second (HTTP_POLLING_SECONDS); polling /slots faster than that keeps the
    # queue busy and the check from ever running, so look only every 1.2 s. Finishing the
    # 2000 tokens would take about 45 s.
    assert wait_until(lambda: not busy(), 4.0, step=1.2), "runner still generating 4 s after"
    assert "\"POST /v1/chat/completions\" 499" in served.log_text()


def test_the_messages_reach_the_model_through_its_chat_template(client: openai.OpenAI) -> None:
    short = client.chat.completions.create(model="gemma3:270m", max_tokens=1, messages=[
        {"role": "user", "content": "hi"}])
    long = client.chat.completions.create(model="gemma3:270m", max_tokens=1, messages=[
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Tell me about lighthouses and their keepers, please."}])
    assert short.usage is not None and long.usage is not None
    # A template wraps turns in markers, so even "hi" is more than BOS plus one token.
    assert short.usage.prompt_tokens > 4
    assert long.usage.prompt_tokens > short.usage.prompt_tokens + 8


def test_streamed_tool_calls_keep_openais_delta_shape(client: openai.OpenAI) -> None:
    tools: list[Any] = [{"type": "function", "function": {
        "name": "get_weather", "description": "Get the weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}}]
    seen: dict[int, int] = {}
    for chunk in client.chat.completions.create(
            model="gemma3:270m", messages=[{"role": "user", "content": "Weather in Paris?"}],
            tools=tools, tool_choice="required", max_tokens=96, temperature=0, stream=True):
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            assert delta.function is not None, "every tool-call delta carries a function object"
            if delta.index not in seen:  # the first delta of a call names it
                assert delta.id and delta.type == "function"
                assert delta.function.name == "get_weather"
            else:  # later ones only add argument fragments
                assert delta.id is None and delta.function.name is None
            seen[delta.index] = seen.get(delta.index, 0) + 1
    assert seen, "no tool call was streamed"
