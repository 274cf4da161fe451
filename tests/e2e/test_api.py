"""OpenAI API conformance through the SDK: auth, limits, request ids, completions."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.e2e.server import Served, environment, gemma_models, start_server

KEY = "sk-test-1"
HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
pytestmark = pytest.mark.usefixtures("real_variants")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, gemma_path: Path) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("api")
    keys = root / "keys.txt"
    keys.write_text("# operators\nsk-from-file\n\n")
    server = start_server(root, gemma_models(gemma_path), {
        "SWITCHBOARD_API_KEYS": f"{KEY},sk-test-2",
        "SWITCHBOARD_API_KEYS_FILE": str(keys),
        "SWITCHBOARD_MAX_BODY_BYTES": "64KiB",
    })
    yield server
    server.stop()


def _client(served: Served, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{served.url}/v1", api_key=key, max_retries=0, timeout=120)


def test_wrong_or_missing_key_is_an_authentication_error(served: Served) -> None:
    with pytest.raises(openai.AuthenticationError):
        _client(served, "sk-wrong").models.list()
    assert httpx.get(f"{served.url}/v1/models").status_code == 401
    assert httpx.get(f"{served.url}/api/ps").status_code == 401
    assert httpx.get(f"{served.url}/health").status_code == 200, "/health stays open"


def test_every_configured_key_works(served: Served) -> None:
    for key in (KEY, "sk-test-2", "sk-from-file"):
        assert "gemma3:270m" in [m.id for m in _client(served, key).models.list()]


def test_n_above_one_is_a_bad_request_not_retried(served: Served) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        _client(served).chat.completions.create(model="gemma3:270m", messages=HI, n=2)
    assert info.value.response.headers["x-should-retry"] == "false"


def test_max_completion_tokens_limits_the_reply(served: Served) -> None:
    reply = _client(served).chat.completions.create(
        model="gemma3:270m", messages=HI, max_completion_tokens=3, temperature=0)
    assert reply.usage is not None and reply.usage.completion_tokens <= 3


def test_completions_plain_and_streamed(served: Served) -> None:
    client = _client(served)
    reply = client.completions.create(model="gemma3:270m", prompt="The sky is", max_tokens=5)
    assert reply.choices[0].text and reply.model == "gemma3:270m"
    chunks = list(client.completions.create(model="gemma", prompt=["Once upon a time"],
                                            max_tokens=5, stream=True))
    assert len(chunks) >= 3 and {c.model for c in chunks} == {"gemma"}
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="gemma3:270m", prompt=[{"x": 1}])  # type: ignore[arg-type]


def test_oversized_body_is_a_413(served: Served) -> None:
    big = {"model": "gemma3:270m", "messages": [{"role": "user", "content": "x" * 70_000}]}
    headers = {"Authorization": f"Bearer {KEY}"}
    response = httpx.post(f"{served.url}/v1/chat/completions", json=big, headers=headers)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "body_too_large"

    def chunks() -> Iterator[bytes]:
        yield b'{"model": "gemma3:270m", "messages": [{"role": "user", "content": "'
        for _ in range(20):
            yield b"x" * 5000
        yield b'"}]}'

    chunked = httpx.post(f"{served.url}/v1/chat/completions", content=chunks(),
                         headers=headers)
    assert chunked.status_code == 413


def test_request_id_is_echoed_or_made(served: Served) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    echoed = httpx.get(f"{served.url}/v1/models", headers={**headers, "x-request-id": "abc-1"})
    assert echoed.headers["x-request-id"] == "abc-1"
    made = httpx.get(f"{served.url}/v1/models", headers=headers)
    assert len(made.headers["x-request-id"]) == 32
    assert "id=abc-1" in served.log_text()


def test_serve_refuses_a_public_address_without_keys(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--host", "0.0.0.0", "--port", "0"],
        env=environment(SWITCHBOARD_HOME=str(tmp_path)), capture_output=True, text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "--insecure" in result.stderr


def test_stream_with_include_usage_ends_with_a_usage_chunk(served: Served) -> None:
    chunks = list(_client(served).chat.completions.create(
        model="gemma3:270m", messages=HI, max_tokens=4, stream=True,
        stream_options={"include_usage": True}))
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens > 0 and last.usage.prompt_tokens > 0


def test_embeddings_base64_and_float_give_the_same_vectors(served: Served) -> None:
    client = _client(served)
    texts = ["first text", "second text", "third"]
    default = client.embeddings.create(model="gemma3:270m", input=texts)  # base64 on the wire
    floats = client.embeddings.create(model="gemma3:270m", input=texts, encoding_format="float")
    assert [d.index for d in default.data] == [0, 1, 2]
    for a, b in zip(default.data, floats.data, strict=True):
        assert a.embedding == pytest.approx(b.embedding, rel=1e-5, abs=1e-6)
    assert default.usage.prompt_tokens > 0


def test_streams_are_not_buffered_by_proxies(served: Served) -> None:
    body = {"model": "gemma3:270m", "messages": HI, "max_tokens": 2, "stream": True}
    with httpx.stream("POST", f"{served.url}/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as response:
        lines = list(response.iter_lines())
    assert response.headers["x-accel-buffering"] == "no"
    assert response.headers["content-type"].startswith("text/event-stream")
    data = [line for line in lines if line]
    assert data[-1] == "data: [DONE]" and not any(line.startswith("id:") for line in data)


def test_metrics_count_requests_tokens_loads_and_runners(served: Served) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    client = _client(served)
    client.chat.completions.create(model="gemma3:270m", messages=HI, max_tokens=3)
    list(client.chat.completions.create(model="gemma3:270m", messages=HI, max_tokens=3,
                                        stream=True))
    # With keys set, /metrics needs one too, sent as a Prometheus scraper sends it.
    text = httpx.get(f"{served.url}/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    chat = "/v1/chat/completions"
    assert value("switchboard_requests_total", route=chat, status="200") >= 2
    assert value("switchboard_request_duration_seconds_count", route=chat,
                 model="gemma3:270m") >= 2
    assert value("switchboard_time_to_first_token_seconds_count", model="gemma3:270m") >= 2
    assert value("switchboard_queue_wait_seconds_count", model="gemma3:270m") >= 2
    assert value("switchboard_generation_tokens_per_second_count", model="gemma3:270m") >= 2
    assert value("switchboard_completion_tokens_total", model="gemma3:270m") >= 2
    assert value("switchboard_prompt_tokens_total", model="gemma3:270m") > 0
    assert value("switchboard_runner_load_seconds_count", model="gemma3:270m",
                 mode="chat") >= 1
    assert "_created" not in text
    assert value("switchboard_loaded_runners", model="gemma3:270m", mode="chat") == 1
    assert value("switchboard_runner_memory_bytes", model="gemma3:270m", mode="chat") > 0
    assert ("switchboard_queue_depth", ()) in samples
    assert value("switchboard_requests_total", route="other", status="404") == 0


def test_cors_is_off_unless_origins_are_configured(served: Served) -> None:
    preflight = httpx.options(f"{served.url}/v1/chat/completions", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers


def test_cors_allows_configured_origins(tmp_path: Path, gemma_path: Path) -> None:
    served = start_server(tmp_path, gemma_models(gemma_path),
                          {"SWITCHBOARD_CORS_ORIGINS": "https://app.example"})
    try:
        preflight = httpx.options(f"{served.url}/v1/chat/completions", headers={
            "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type"})
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        other = httpx.get(f"{served.url}/v1/models", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
    finally:
        served.stop()


def test_start_banner_says_where_which_runner_and_why_gpus_models_and_auth(
    served: Served,
) -> None:
    log = served.log_text()
    assert f"listening on http://127.0.0.1:{served.port}/v1" in log
    assert "runner: cpu" in log and ("(CPU has" in log or "runs on any x86-64 CPU" in log)
    assert "GPUs: none found" in log or "GPU 0:" in log
    assert "models (1): gemma3:270m" in log
    assert "auth: on (3 keys)" in log
    assert "config: /" in log and "switchboard.yaml" in log  # the file the settings came from
