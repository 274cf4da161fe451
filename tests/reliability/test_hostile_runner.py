"""Requests that used to crash, bloat or occupy the real runner (issue 18's list), sent one
after another to one llama-server: each is refused in the client's API shape, quickly, and
afterwards the runner is the same process and still answers."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.server import Served, gemma_models, start_server

pytestmark = pytest.mark.usefixtures("real_variants")
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, gemma_path: Path) -> Iterator[Served]:
    server = start_server(tmp_path_factory.mktemp("hostile-runner"), gemma_models(gemma_path))
    yield server
    server.stop()


def _chat(served: Served, timeout: float = 60, **fields: Any) -> httpx.Response:
    body = {"model": "gemma3:270m", "messages": HI, "max_tokens": 3, **fields}
    return httpx.post(f"{served.url}/v1/chat/completions", json=body, timeout=timeout)


def _deep_schema(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


HOSTILE: dict[str, dict[str, Any]] = {
    "grammar nested 20,000 groups (llama-server SIGSEGV)":
        {"grammar": "root ::= " + "(" * 20_000 + '"a"' + ")" * 20_000},
    "n_probs 262144 (79 MB answer, 1.6 GB runner)": {"n_probs": 262144},
    "n_probs 262144 over 20 tokens (9.1 GB runner)": {"n_probs": 262144, "max_tokens": 20},
    "top_logprobs 262144": {"logprobs": True, "top_logprobs": 262144},
    "50 DRY breakers of 100 KB (16.8 GB, 76 s)":
        {"dry_multiplier": 0.8, "dry_sequence_breakers": ["x" * 100_000] * 50},
    "100,000 logit_bias entries (13 s)": {"logit_bias": {str(i): 1 for i in range(100_000)}},
    "5,000 tools (8.8 s, 1.6 GB)": {"tools": [
        {"type": "function", "function": {"name": f"f{i}", "parameters": {
            "type": "object", "properties": {"x": {"type": "string"}}}}} for i in range(5000)]},
    "a JSON schema 200 levels deep": {"json_schema": _deep_schema(200)},
    "a response_format schema 200 levels deep": {"response_format": {
        "type": "json_schema", "json_schema": {"name": "r", "schema": _deep_schema(200)}}},
    "100,000 messages (6 min of a runner core)": {"messages": HI * 100_000},
    "repeat_last_n 2^31-1 (an 8 GiB ring buffer)":
        {"repeat_last_n": 2**31 - 1, "repeat_penalty": 1.1},
    "a schema of 20,000 optional properties (hangs the schema converter)":
        {"json_schema": {"type": "object",
                         "properties": {f"p{i}": {} for i in range(20_000)}}},
    "an image by URL (downloaded by a runner with a projector)": {"messages": [
        {"role": "user", "content": [{"type": "image_url",
                                      "image_url": {"url": "http://169.254.169.254/"}}]}]},
    "a 30 MB prompt (39 s and 2.3 GB before llama-server refused it)":
        {"messages": [{"role": "user", "content": "hello world " * 2_500_000}]},
}


def test_every_hostile_request_is_refused_and_the_runner_survives(served: Served) -> None:
    assert _chat(served).status_code == 200
    (pid,) = served.runner_pids()
    timings = {}
    for name, fields in HOSTILE.items():
        started = time.monotonic()
        answer = _chat(served, **fields)
        timings[name] = time.monotonic() - started
        assert answer.status_code == 400, (name, answer.text[:300])
        error = answer.json()["error"]
        assert error["type"] == "invalid_request_error", name
        assert error["code"] in ("limit_exceeded", "context_length_exceeded",
                                 "unsupported_value"), name
        assert served.runner_pids() == [pid], f"{name}: the runner changed"
    # Refused by the gateway, not after the runner worked on it: the slowest is parsing
    # the 30 MB body.
    assert max(timings.values()) < 5, timings
    after = _chat(served)
    assert after.status_code == 200 and after.json()["choices"][0]["message"]
    assert served.runner_pids() == [pid]
    assert "Traceback" not in served.log_text()


def test_unknown_fields_never_reach_the_runner(served: Served) -> None:
    # id_slot 99 does not exist: llama-server would answer 400 (or worse) if it saw it.
    answer = _chat(served, id_slot=99, n_cmpl=8, verbose=True)
    assert answer.status_code == 200, answer.text
    assert "__verbose" not in answer.json()


def test_a_long_prompt_that_fits_is_checked_and_answered(served: Served) -> None:
    # 6,000 bytes (about 1,000 tokens) against 2,048 tokens of context: more bytes than the
    # context has tokens, so the gateway's check runs, and finds it may fit.
    answer = _chat(served, messages=[{"role": "user", "content": "hello world " * 500}])
    assert answer.status_code == 200, answer.text
    assert 900 < answer.json()["usage"]["prompt_tokens"] < 2048


def test_the_rest_of_the_list_leaves_the_same_runner_serving(served: Served) -> None:
    """What of issue 18's list reaches a live server without reaching the runner: a path
    that would forge a log line, a client leaving mid-upload, a malformed chunked body, a
    body that never ends (bounded by SWITCHBOARD_BODY_TIMEOUT, 30 s: left, not waited on)."""
    assert _chat(served).status_code == 200
    (pid,) = served.runner_pids()
    forged = httpx.get(f"{served.url}/v1/models%0a2026-12-02 05:00:00,000 INFO "
                       "switchboard.access: forged%1b[31m", timeout=10)
    assert forged.status_code == 404
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\n")
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        sock.sendall(head + b"Content-Length: 100000\r\n\r\n" + b'{"model": "gemma3:270m"')
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        sock.sendall(head + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nnot a chunk\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 400 ")
    after = _chat(served)
    assert after.status_code == 200
    assert served.runner_pids() == [pid]
    log = served.log_text()
    assert "Traceback" not in log and "\x1b" not in log
    assert not any(line.startswith("2026-12-02 05:00:00,000") for line in log.splitlines())
