"""The allowlist: unknown fields dropped, every bounded field refused past its bound with a
400 naming the field and the setting, and nothing measured that is not there."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from gguf import GGUFWriter

from gateway.allowlist import Allowlist, check_fits, grammar_depth, text_bytes
from gateway.errors import APIError
from runner.context_window import context_window
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
    body = _chat(id_slot=0, n_cmpl=4, verbose=True, temperature=0.5)
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
    writer.add_context_length(1024)
    writer.add_token_list(["a", "abcd"])  # no token covers more than 4 bytes
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _fits(path: Path, text: str | list[Any], ctx: int = 0, parallel: int = 1,
          args: tuple[str, ...] = (), field: str = "messages") -> None:
    value: Any = [{"role": "user", "content": text}] if field == "messages" else text
    data = {field: value}
    check_fits(context_window(path, ctx, parallel, args), data, text_bytes(data))


def _refused_fit(path: Path, text: str | list[Any], **how: Any) -> APIError:
    with pytest.raises(APIError) as caught:
        _fits(path, text, **how)
    assert caught.value.code == "context_length_exceeded"
    return caught.value


def test_a_prompt_longer_than_context_times_the_longest_token_is_refused(
        tmp_path: Path) -> None:
    gguf = _vocabulary_gguf(tmp_path / "v.gguf")
    _fits(gguf, "x" * 4092)  # with "user": at least 1024 tokens, which may fit the 1024
    assert "at least 1026 tokens" in _refused_fit(gguf, "x" * 4100).message


def test_the_context_check_uses_the_configured_context_per_slot(tmp_path: Path) -> None:
    gguf = _vocabulary_gguf(tmp_path / "v.gguf")
    _fits(gguf, "x" * 4092, ctx=2048, parallel=2)
    _refused_fit(gguf, "x" * 4100, ctx=2048, parallel=2)
    _fits(gguf, "x" * 4100, ctx=2048, parallel=2, args=("--kv-unified",))  # one shared cache


def test_a_models_args_override_its_context_and_slots(tmp_path: Path) -> None:
    gguf = _vocabulary_gguf(tmp_path / "v.gguf")
    _fits(gguf, "x" * 8000, ctx=1024, args=("-c", "4096"))  # the args come last in argv
    _refused_fit(gguf, "x" * 8000, ctx=4096, args=("--parallel", "4"))


def test_each_slots_share_is_padded_as_llama_server_pads_it(tmp_path: Path) -> None:
    gguf = _vocabulary_gguf(tmp_path / "v.gguf")
    # 3072 / 5 slots = 614 tokens, which llama-server pads to 768: 3,000 bytes may fit.
    _fits(gguf, "x" * 3000, ctx=3072, parallel=5)


def test_media_and_an_array_of_prompts_do_not_count_as_one_long_text(tmp_path: Path) -> None:
    gguf = _vocabulary_gguf(tmp_path / "v.gguf")
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 99_999}}
    _fits(gguf, [{"type": "text", "text": "what is it?"}, image])
    _fits(gguf, ["x" * 4000] * 10, field="prompt")  # ten prompts, each in its own slot
    _refused_fit(gguf, ["x" * 4000, "x" * 5000], field="prompt")


def test_whitespace_a_template_trims_does_not_count_against_the_context(
        tmp_path: Path) -> None:
    gguf = _vocabulary_gguf(tmp_path / "v.gguf")
    _fits(gguf, " " * 10_000 + "x" * 3000 + "\n" * 10_000)


def test_a_file_that_is_not_gguf_is_left_to_the_runner(tmp_path: Path) -> None:
    (tmp_path / "bad.gguf").write_bytes(b"nope")
    _fits(tmp_path / "bad.gguf", "x" * 100_000)


@pytest.mark.parametrize(("field", "value", "setting"), [
    # property names are keys: 20,000 of them hung llama.cpp's schema converter
    ("response_format", {"type": "json_schema", "json_schema": {"name": "r", "schema": {
        "type": "object", "properties": {f"p{i}": {} for i in range(20_000)}}}},
     "MAX_GRAMMAR_BYTES"),
    ("json_schema", {"type": "object", "properties": {f"p{i}": {} for i in range(300)}},
     "MAX_SCHEMA_PROPERTIES"),
    ("tools", [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {f"p{i}": {} for i in range(300)}}}}],
     "MAX_SCHEMA_PROPERTIES"),
    ("repeat_last_n", 2**31 - 1, "MAX_LAST_N"),
    ("dry_penalty_last_n", 2**31 - 1, "MAX_LAST_N"),
    ("logit_bias", {"x" * 2000: 1}, "MAX_STOP_LENGTH"),
    ("logit_bias", [["x" * 2000, 1]], "MAX_STOP_LENGTH"),
])
def test_what_a_runner_spends_on_without_showing_it_is_bounded_too(
        field: str, value: Any, setting: str) -> None:
    error = _refused(_chat(**{field: value}))
    assert f"SWITCHBOARD_{setting}" in error.message


def test_minus_one_last_n_means_the_context_and_passes() -> None:
    Allowlist(Settings()).vet(CHAT, _chat(repeat_last_n=-1, dry_penalty_last_n=-1))


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data", "https://x/y.png",
                                 "file:///etc/passwd"])
def test_media_by_url_never_reaches_a_runner(url: str) -> None:
    parts = [{"type": "text", "text": "what is this?"},
             {"type": "image_url", "image_url": {"url": url}}]
    error = _refused(_chat(messages=[{"role": "user", "content": parts}]))
    assert error.param == "messages" and "data: URL" in error.message


@pytest.mark.parametrize(("path", "field", "part"), [
    (b"/v1/responses", "input", {"type": "input_image", "image_url": "http://10.0.0.1/x"}),
    (b"/v1/messages", "messages", {"type": "image", "source": {"type": "url",
                                                                "url": "https://x/y.png"}}),
    (CHAT, "messages", {"type": "input_audio", "input_audio": {"data": "http://x/a.wav"}}),
])
def test_media_by_url_is_refused_in_every_familys_shape(path: bytes, field: str,
                                                        part: dict[str, Any]) -> None:
    body = {"model": "m", field: [{"role": "user", "content": [part]}]}
    assert _refused(body, path).param == field


def test_inline_media_passes() -> None:
    parts = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]
    Allowlist(Settings()).vet(CHAT, _chat(messages=[{"role": "user", "content": parts}]))


@pytest.mark.parametrize("lora", [{"id": 0}, [{"id": -1, "scale": 1}], [{"id": 0}],
                                  [{"id": 0, "scale": float("inf")}], [{"id": "0", "scale": 1}],
                                  [{"id": 0, "scale": 1}] * 65])
def test_a_requests_own_adapter_scales_must_be_ids_and_finite_scales(lora: Any) -> None:
    error = _refused(_chat(lora=lora))
    assert error.param == "lora" and "{id, scale}" in error.message


def test_adapter_scales_of_the_right_shape_pass_to_the_runner() -> None:
    body = _chat(lora=[{"id": 0, "scale": 0.5}, {"id": 1, "scale": 0}])
    assert not Allowlist(Settings()).vet(CHAT, body).edited and "lora" in body
