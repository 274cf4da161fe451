"""The Ollama translations on canned OpenAI answers: what llama-server sends, what Ollama's
clients must receive."""

from __future__ import annotations

import orjson
import pytest

from gateway.errors import APIError
from gateway.ollama.generate import Generation, _messages
from gateway.ollama.options import response_format, runner_options, sampling_fields


def _lines(raw: bytes) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in raw.splitlines() if line]


def _chunk(delta: dict[str, object], finish: str | None = None) -> bytes:
    return orjson.dumps({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


def test_generation_joins_streamed_tool_call_fragments_into_one_message() -> None:
    gen = Generation("m", "chat")
    out = gen.event(_chunk({"tool_calls": [{"index": 0, "id": "c1", "type": "function",
                                            "function": {"name": "get_weather",
                                                         "arguments": '{"ci'}}]}))
    rest = {"index": 0, "function": {"arguments": 'ty": "Oslo"}'}}
    out += gen.event(_chunk({"tool_calls": [rest]}))
    out += gen.event(_chunk({}, "tool_calls"))
    assert out == b""  # fragments are held back until the call is whole
    lines = _lines(gen.end())
    calls = lines[0]["message"]["tool_calls"]  # type: ignore[index]
    assert calls == [{"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]
    assert lines[1]["done"] is True and lines[1]["done_reason"] == "stop"


def test_generation_streams_content_and_counts_from_timings() -> None:
    gen = Generation("alias", "chat")
    first = _lines(gen.event(_chunk({"content": "Hel"})))
    assert first[0]["message"] == {"role": "assistant", "content": "Hel"}
    assert first[0]["model"] == "alias" and first[0]["done"] is False
    assert str(first[0]["created_at"]).endswith("Z")
    gen.event(orjson.dumps({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}],
                            "timings": {"prompt_n": 7, "prompt_ms": 12.5, "predicted_n": 3,
                                        "predicted_ms": 30.0}}))
    done = _lines(gen.end())[-1]
    assert done["done_reason"] == "length"
    assert done["prompt_eval_count"] == 7 and done["eval_count"] == 3
    assert done["prompt_eval_duration"] == 12_500_000 and done["eval_duration"] == 30_000_000


def test_generation_passes_a_runner_error_event_as_an_ollama_error_line() -> None:
    gen = Generation("m", "generate")
    line = _lines(gen.event(b'{"error": {"code": 500, "message": "boom"}}'))
    assert line == [{"error": "boom"}]
    assert gen.end() == b""


def test_generate_answers_carry_response_not_message() -> None:
    gen = Generation("m", "generate")
    body = orjson.loads(gen.whole(orjson.dumps({
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "hi"}}],
        "usage": {"prompt_tokens": 2, "completion_tokens": 1}})))
    assert body["response"] == "hi" and "message" not in body
    assert body["eval_count"] == 1 and body["done"] is True


def test_messages_get_tool_call_ids_matched_to_tool_results() -> None:
    converted = _messages([
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "w", "arguments": {"city": "Oslo"}}},
            {"function": {"name": "w", "arguments": {"city": "Rome"}}}]},
        {"role": "tool", "content": "cold", "tool_name": "w"},
        {"role": "tool", "content": "warm", "tool_name": "w"},
    ])
    calls = converted[1]["tool_calls"]
    assert [c["id"] for c in calls] == ["call_1", "call_2"]
    assert orjson.loads(calls[0]["function"]["arguments"]) == {"city": "Oslo"}
    assert [m["tool_call_id"] for m in converted[2:]] == ["call_1", "call_2"]


def test_images_become_content_parts() -> None:
    converted = _messages([{"role": "user", "content": "what is it?", "images": ["aGk="]}])
    assert converted[0]["content"][1] == {
        "type": "image_url", "image_url": {"url": "data:image/png;base64,aGk="}}


def test_options_map_to_sampling_fields_and_runner_shape() -> None:
    fields = sampling_fields({"temperature": 0.2, "num_predict": 9, "top_k": 5,
                              "stop": ["\n"], "num_keep": 4, "unknown": 1})
    assert fields == {"temperature": 0.2, "max_tokens": 9, "top_k": 5, "stop": ["\n"],
                      "n_keep": 4}
    assert "max_tokens" not in sampling_fields({"num_predict": -1})
    shape = runner_options({"num_ctx": 1024, "num_gpu": 10})
    assert shape.ctx_size == 1024 and shape.gpu_layers == 10


@pytest.mark.parametrize("options", [{"temperature": "hot"}, {"num_ctx": 0},
                                     {"top_k": True}, {"stop": "x"}])
def test_wrong_option_types_are_400s(options: dict[str, object]) -> None:
    with pytest.raises(APIError) as caught:
        sampling_fields(options)
        runner_options(options)
    assert caught.value.status == 400


def test_format_becomes_response_format() -> None:
    assert response_format("json") == {"type": "json_object"}
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert response_format(schema) == {
        "type": "json_schema", "json_schema": {"name": "response", "schema": schema}}
    assert response_format("") is None
    with pytest.raises(APIError):
        response_format("yaml")
