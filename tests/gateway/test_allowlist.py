"""The allowlist: unknown fields dropped, every bounded field refused past its bound with a
400 naming the field and the setting, and nothing measured that is not there."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from gguf import GGUFWriter

from gateway.allowlist import Allowlist, check_fits, grammar_depth, text_bytes
from gateway.errors import APIError
from runner.settings import Settings

CHAT = b"/v1/chat/completions"


def _chat(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}


def _refused(body: dict[str, Any], path: bytes = CHAT, **settings: Any) -> APIError:
    with pytest.raises(APIError) as caught:
        Allowlist(Settings(**settings)).vet(path, body)
    assert caught.value.status == 400
    return caught.value


def test_unknown_fields_are_dropped_and_the_body_marked_edited() -> None:
    body = _chat(id_slot=0, n_cmpl=4, lora=[{"id": 0, "scale": 9}], temperature=0.5)
    vetted = Allowlist(Settings()).vet(CHAT, body)
    assert vetted.edited
    assert body == _chat(temperature=0.5)


def test_a_body_of_known_fields_is_left_as_sent() -> None:
    body = _chat(temperature=0.5, n_probs=5, stop=["\n"], stream=True)
    vetted = Allowlist(Settings()).vet(CHAT, dict(body))
    assert not vetted.edited


def test_unknown_fields_pass_when_the_operator_opts_in() -> None:
    body = _chat(id_slot=0)
    assert not Allowlist(Settings(pass_unknown_fields=True)).vet(CHAT, body).edited
    assert body["id_slot"] == 0


def test_each_family_has_its_own_list() -> None:
    body = {"model": "m", "input": "x", "temperature": 1.0}
    assert Allowlist(Settings()).vet(b"/v1/embeddings", body).edited
    assert "temperature" not in body


@pytest.mark.parametrize(("field", "value", "setting"), [
    ("n_probs", 262144, "MAX_PROBS"),
    ("top_logprobs", 21, "MAX_PROBS"),
    ("logit_bias", {str(i): 1 for i in range(1025)}, "MAX_LOGIT_BIAS"),
    ("stop", [f"s{i}" for i in range(17)], "MAX_STOP"),
    ("stop", ["x" * 1025], "MAX_STOP_LENGTH"),
    ("samplers", ["top_k"] * 33, "MAX_SAMPLERS"),
    ("dry_sequence_breakers", ["x" * 100_000] * 5, "MAX_DRY_BREAKER_LENGTH"),
    ("dry_sequence_breakers", ["\n"] * 17, "MAX_DRY_BREAKERS"),
    ("grammar", "root ::= " + "(" * 20_000 + '"a"' + ")" * 20_000, "MAX_NESTING"),
    ("grammar", 'root ::= "' + "a" * 70_000 + '"', "MAX_GRAMMAR_BYTES"),
    ("tools", [{"type": "function", "function": {"name": f"f{i}"}} for i in range(129)],
     "MAX_TOOLS"),
    ("messages", [{"role": "user", "content": "x"}] * 1025, "MAX_MESSAGES"),
])
def test_a_field_over_its_bound_is_a_400_naming_field_and_setting(
        field: str, value: Any, setting: str) -> None:
    error = _refused(_chat(**{field: value}))
    assert error.param == field
    assert f"SWITCHBOARD_{setting}" in error.message
    assert error.code == "limit_exceeded"


def test_a_deep_json_schema_is_refused_without_recursion() -> None:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(50_000):  # a recursive walk would overflow Python's stack here
        schema = {"type": "object", "properties": {"a": schema}}
    error = _refused(_chat(response_format={"type": "json_schema",
                                            "json_schema": {"schema": schema}}))
    assert error.param == "response_format"
    assert "SWITCHBOARD_MAX_NESTING" in error.message


def test_a_deep_value_of_any_field_is_refused() -> None:
    deep: Any = "x"
    for _ in range(200):
        deep = [deep]
    assert _refused(_chat(metadata={"k": deep})).param == "metadata"


def test_bounds_follow_the_settings() -> None:
    assert _refused(_chat(n_probs=3), max_probs=2).param == "n_probs"
    Allowlist(Settings(max_probs=300)).vet(CHAT, _chat(n_probs=300))


def test_a_token_array_prompt_is_one_prompt_not_many_items() -> None:
    body = {"model": "m", "prompt": list(range(5000))}
    Allowlist(Settings()).vet(b"/v1/completions", body)


def test_the_prompt_bytes_count_the_text_that_becomes_the_prompt() -> None:
    body = _chat(messages=[{"role": "user", "content": "héllo"}], stop=["zzzzzz"])
    # "user" + "héllo" (6 bytes): stop strings are not prompt
    assert Allowlist(Settings()).vet(CHAT, body).prompt_bytes == 4 + 6


def test_grammar_depth_skips_literals_classes_and_comments() -> None:
    assert grammar_depth('root ::= ("(" [(] ( "a" ))  # ((((', 100) == 2
    assert grammar_depth('root ::= "\\"((("', 100) == 0
    assert grammar_depth("a ::= " + "(" * 5 + ")" * 5, 100) == 5


def test_text_bytes_counts_utf8() -> None:
    assert text_bytes({"a": ["é", {"b": "xy"}], "n": 3}) == 4


def _vocabulary_gguf(path: Path) -> Path:
    writer = GGUFWriter(str(path), "gemma3")
    writer.add_context_length(100)
    writer.add_token_list(["a", "abcd"])  # no token covers more than 4 bytes
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _fits(path: Path, text: str, ctx: int = 0, parallel: int = 1,
          args: tuple[str, ...] = ()) -> None:
    data = {"messages": [{"role": "user", "content": text}]}
    asyncio.run(check_fits(path, ctx, parallel, args, data, text_bytes(data)))


def test_a_prompt_longer_than_context_times_the_longest_token_is_refused(
        tmp_path: Path) -> None:
    gguf = _vocabulary_gguf(tmp_path / "v.gguf")
    _fits(gguf, "x" * 396)  # at least 100 tokens (with "user"): may fit the model's 100
    with pytest.raises(APIError) as caught:
        _fits(gguf, "x" * 404)  # at least 102
    assert caught.value.code == "context_length_exceeded"
    assert "at least 102 tokens" in caught.value.message


def test_the_context_check_uses_the_configured_context_per_slot(tmp_path: Path) -> None:
    gguf = _vocabulary_gguf(tmp_path / "v.gguf")
    _fits(gguf, "x" * 396, ctx=200, parallel=2)
    with pytest.raises(APIError):
        _fits(gguf, "x" * 404, ctx=200, parallel=2)
    _fits(gguf, "x" * 404, ctx=200, parallel=2, args=("--kv-unified",))  # one shared cache


def test_whitespace_a_template_trims_does_not_count_against_the_context(
        tmp_path: Path) -> None:
    gguf = _vocabulary_gguf(tmp_path / "v.gguf")
    _fits(gguf, " " * 10_000 + "x" * 300 + "\n" * 10_000)


def test_a_file_that_is_not_gguf_is_left_to_the_runner(tmp_path: Path) -> None:
    (tmp_path / "bad.gguf").write_bytes(b"nope")
    _fits(tmp_path / "bad.gguf", "x" * 100_000)
