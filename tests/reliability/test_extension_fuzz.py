"""Property-based fuzzing of llama.cpp's request extensions with large and deep values, the
kind that found a grammar crashing llama-server and single requests taking gigabytes, against
the real runner and model: every answer is a 200 or a 4xx in OpenAI's shape, and the runner
that served them is the same process at the end, still answering."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.server import Served, gemma_models, start_server

pytestmark = pytest.mark.usefixtures("real_variants")
EXAMPLES = 40  # each one a real generation of 2 tokens at most: about a second in all


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, gemma_path: Path) -> Iterator[Served]:
    models = gemma_models(gemma_path)
    # A small context keeps an accepted prompt's evaluation short on 2 cores.
    models["gemma3:270m"]["ctx_size"] = 512
    server = start_server(tmp_path_factory.mktemp("extension-fuzz"), models,
                          {"SWITCHBOARD_LOG_LEVEL": "warning"})
    yield server
    server.stop()


def _deep(levels: int, leaf: Any, kind: str) -> Any:
    value = leaf
    for _ in range(levels):
        value = [value] if kind == "list" else {"type": "object", "properties": {"a": value}}
    return value


SIZES = st.integers(0, 10) | st.integers(0, 300) | st.integers(0, 30_000)
NUMBERS = (st.sampled_from([0, 1, -1, 20, 21, 1024, 262144, 2**31, -(2**31), 2**53])
           | st.integers(-(2**40), 2**40)
           | st.floats(-1e12, 1e12, allow_nan=False, allow_infinity=False))
SAMPLER_NAMES = ["top_k", "top_p", "min_p", "typ_p", "temperature", "xtc", "dry",
                 "penalties", "top_n_sigma", "mirostat", "nonsense"]

GRAMMARS = st.one_of(
    SIZES.map(lambda d: "root ::= " + "(" * d + '"a"' + ")" * d),
    st.integers(0, 20_000).map(lambda n: "root ::= " + " | ".join(['"x"'] * (n + 1))),
    st.integers(0, 5_000).map(lambda n: 'root ::= "' + "a" * n * 10 + '"'),
    st.text(max_size=40),
)
EXTENSIONS: dict[str, st.SearchStrategy[Any]] = {
    "grammar": GRAMMARS,
    "response_format": st.integers(0, 400).map(lambda d: {
        "type": "json_schema", "json_schema": {"name": "r", "schema": _deep(
            d, {"type": "string"}, "schema")}}),
    "n_probs": NUMBERS,
    "top_logprobs": NUMBERS,
    "min_keep": NUMBERS,
    "top_k": NUMBERS,
    "n_keep": NUMBERS,
    "mirostat": st.sampled_from([0, 1, 2, 3, -1]),
    "temperature": NUMBERS,
    "repeat_last_n": NUMBERS,
    "repeat_penalty": st.floats(0, 2),  # with it, repeat_last_n sizes a real buffer
    "dry_multiplier": NUMBERS,
    "dry_allowed_length": NUMBERS,
    "dry_penalty_last_n": NUMBERS,
    "xtc_probability": NUMBERS,
    "stop": st.tuples(st.integers(0, 100), st.integers(0, 5_000)).map(
        lambda cs: ["s" * cs[1]] * cs[0]),
    "samplers": st.lists(st.sampled_from(SAMPLER_NAMES), max_size=200),
    "dry_sequence_breakers": st.tuples(st.integers(0, 60), st.integers(0, 100_000)).map(
        lambda cs: ["b" * cs[1]] * cs[0]),
    "tools": st.tuples(st.integers(0, 3_000), st.integers(0, 200)).map(lambda cd: [
        {"type": "function", "function": {"name": f"f{i}", "parameters": _deep(
            cd[1] if i == 0 else 0, {"type": "string"}, "schema")}} for i in range(cd[0])]),
    "messages": st.integers(1, 5_000).map(
        lambda n: [{"role": "user", "content": "hi"}] * n),
    "chat_template_kwargs": st.integers(0, 400).map(lambda d: {"k": _deep(d, 1, "list")}),
    "json_schema": st.one_of(
        st.integers(0, 400).map(lambda d: _deep(d, {"type": "string"}, "schema")),
        st.integers(0, 30_000).map(lambda n: {"type": "object", "properties": {
            f"p{i}": {} for i in range(n)}})),
    "logit_bias": st.one_of(
        st.integers(0, 200_000).map(lambda n: {str(i): -1.0 for i in range(n)}),
        st.tuples(st.integers(0, 2_000), st.integers(0, 5_000)).map(
            lambda cs: [["t" * cs[1], -1.0]] * cs[0])),
    # Outside the allowlist: dropped before the runner, whatever their values.
    "id_slot": NUMBERS,
    "n_cmpl": NUMBERS,
    "lora": st.integers(0, 50).map(lambda n: [{"id": i, "scale": 1e9} for i in range(n)]),
    "n_cache_reuse": NUMBERS,
}
BODIES = st.fixed_dictionaries({}, optional=EXTENSIONS)


def _refused_in_openai_shape(answer: httpx.Response) -> bool:
    try:
        error = answer.json()["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(error, dict) and isinstance(error.get("message"), str)


def test_extension_fields_never_crash_or_replace_the_runner(served: Served) -> None:
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))  # json.dumps of deep values
    first = httpx.post(f"{served.url}/v1/chat/completions", timeout=120, json={
        "model": "gemma3:270m", "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2})
    assert first.status_code == 200
    (pid,) = served.runner_pids()
    seen: dict[int, int] = {}

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(fields=BODIES)
    def one(fields: dict[str, Any]) -> None:
        body = {"model": "gemma3:270m", "messages": [{"role": "user", "content": "hi"}],
                **fields, "max_tokens": 2}
        answer = httpx.post(f"{served.url}/v1/chat/completions", timeout=120,
                            content=json.dumps(body), headers={"content-type":
                                                               "application/json"})
        seen[answer.status_code] = seen.get(answer.status_code, 0) + 1
        assert answer.status_code == 200 or (
            400 <= answer.status_code < 500 and _refused_in_openai_shape(answer)), (
            sorted(fields), answer.status_code, answer.text[:300])
        assert served.runner_pids() == [pid], f"the runner changed after {sorted(fields)}"

    one()
    assert seen.get(200) and sum(v for k, v in seen.items() if k >= 400), seen  # both kinds
    last = httpx.post(f"{served.url}/v1/chat/completions", timeout=120, json={
        "model": "gemma3:270m", "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2})
    assert last.status_code == 200
    assert served.runner_pids() == [pid]
    assert "Traceback" not in served.log_text()
