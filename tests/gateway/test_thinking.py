"""Thinking on every API family, against a fake runner that reasons: llama-server's
``reasoning_content`` passes through /v1 whole and streamed, Ollama's ``think`` becomes the
runner's reasoning controls and comes back as ``message.thinking``, and Anthropic's and the
Responses API's own fields reach the runner (which answers them in their shapes)."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from tests.fakes.fake_service import (
    USAGE,
    FakeModelService,
    FakeUpstream,
    Reply,
    UpstreamRequest,
    chat_chunk,
    json_reply,
    sse_reply,
)

HI = [{"role": "user", "content": "Why is the sky blue?"}]
THINKER = "{% if enable_thinking %}<think>{% endif %}{{ messages }}"


def _thought(piece: str) -> dict[str, Any]:
    return {"object": "chat.completion.chunk", "model": "tiny", "choices": [
        {"index": 0, "delta": {"reasoning_content": piece}, "finish_reason": None}]}


def _reasoning(request: UpstreamRequest) -> Reply:
    """A runner that thinks before it answers, whole or streamed."""
    if request.json().get("stream"):
        return sse_reply(_thought("Light "), _thought("scatters."), chat_chunk("tiny", "Rayleigh."),
                         {**chat_chunk("tiny", finish="stop"), "usage": USAGE},
                         b"data: [DONE]\n\n")
    return json_reply({"id": "c", "object": "chat.completion", "model": "tiny", "choices": [
        {"index": 0, "finish_reason": "stop", "message": {
            "role": "assistant", "content": "Rayleigh.", "reasoning_content": "Light scatters."}}],
        "usage": USAGE})


@pytest.fixture
def thinker(service: FakeModelService, upstream: FakeUpstream) -> FakeModelService:
    service.templates["tiny"] = THINKER
    upstream.responder = _reasoning
    return service


async def _post(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> httpx.Response:
    return await client.post(path, content=orjson.dumps(body),
                             headers={"content-type": "application/json"})


@pytest.mark.usefixtures("thinker")
async def test_openai_reasoning_content_passes_through_whole_and_streamed(
        client: httpx.AsyncClient) -> None:
    whole = await _post(client, "/v1/chat/completions", {"model": "tiny", "messages": HI})
    assert whole.json()["choices"][0]["message"]["reasoning_content"] == "Light scatters."
    streamed = await _post(client, "/v1/chat/completions",
                           {"model": "tiny", "messages": HI, "stream": True})
    events = [orjson.loads(line[6:]) for line in streamed.text.splitlines()
              if line.startswith("data: {")]
    thought = "".join(e["choices"][0]["delta"].get("reasoning_content", "") for e in events
                      if e.get("choices"))
    assert thought == "Light scatters."


@pytest.mark.usefixtures("thinker")
async def test_ollama_think_turns_the_runners_reasoning_on_and_answers_message_thinking(
        client: httpx.AsyncClient, upstream: FakeUpstream) -> None:
    whole = await _post(client, "/api/chat", {"model": "tiny", "messages": HI, "think": True,
                                              "stream": False})
    assert whole.status_code == 200, whole.text
    assert upstream.last.json()["chat_template_kwargs"] == {"enable_thinking": True}
    assert whole.json()["message"] == {"role": "assistant", "content": "Rayleigh.",
                                       "thinking": "Light scatters."}
    streamed = await _post(client, "/api/chat", {"model": "tiny", "messages": HI,
                                                 "think": True})
    lines = [orjson.loads(line) for line in streamed.text.splitlines()]
    assert "".join(line["message"].get("thinking", "") for line in lines) == "Light scatters."
    assert "".join(line["message"]["content"] for line in lines) == "Rayleigh."
    await _post(client, "/api/chat", {"model": "tiny", "messages": HI, "think": "high",
                                      "stream": False})
    assert upstream.last.json()["reasoning_effort"] == "high"
    await _post(client, "/api/generate", {"model": "tiny", "prompt": "x", "think": False,
                                          "stream": False})
    assert upstream.last.json()["chat_template_kwargs"] == {"enable_thinking": False}


async def test_think_asked_of_a_model_that_cannot_think_is_ollamas_400(
        client: httpx.AsyncClient, upstream: FakeUpstream) -> None:
    refused = await _post(client, "/api/chat", {"model": "tiny", "messages": HI, "think": True})
    assert refused.status_code == 400
    assert refused.json() == {"error": '"tiny" does not support thinking'}
    wrong = await _post(client, "/api/generate", {"model": "tiny", "prompt": "x",
                                                  "think": "extreme"})
    assert wrong.status_code == 400 and "'think' must be" in wrong.json()["error"]
    assert upstream.requests == []  # neither reached the runner


@pytest.mark.usefixtures("thinker")
async def test_anthropic_thinking_and_responses_reasoning_reach_the_runner(
        client: httpx.AsyncClient, upstream: FakeUpstream) -> None:
    upstream.responder = lambda request: json_reply({"ok": True})
    await _post(client, "/v1/messages", {"model": "tiny", "max_tokens": 64, "messages": HI,
                                         "thinking": {"type": "enabled", "budget_tokens": 32}})
    assert upstream.last.json()["thinking"] == {"type": "enabled", "budget_tokens": 32}
    await _post(client, "/v1/responses", {"model": "tiny", "input": "hi",
                                          "reasoning": {"effort": "low"}})
    assert upstream.last.json()["reasoning"] == {"effort": "low"}


@pytest.mark.usefixtures("thinker")
async def test_the_runners_thinking_blocks_and_reasoning_items_reach_the_client_whole(
        client: httpx.AsyncClient, upstream: FakeUpstream) -> None:
    thinking = {"type": "message", "role": "assistant", "model": "tiny", "content": [
        {"type": "thinking", "thinking": "Light scatters.", "signature": ""},
        {"type": "text", "text": "Rayleigh."}], "stop_reason": "end_turn",
        "usage": {"input_tokens": 7, "output_tokens": 2}}
    upstream.responder = lambda request: json_reply(thinking)
    claude = await _post(client, "/v1/messages", {"model": "tiny", "max_tokens": 64,
                                                  "messages": HI})
    assert claude.json()["content"][0] == thinking["content"][0]  # type: ignore[index]
    reasoning = {"object": "response", "status": "completed", "model": "tiny", "output": [
        {"type": "reasoning", "summary": [], "content": [
            {"type": "reasoning_text", "text": "Light scatters."}]},
        {"type": "message", "role": "assistant", "content": [
            {"type": "output_text", "text": "Rayleigh."}]}]}
    upstream.responder = lambda request: json_reply(reasoning)
    responses = await _post(client, "/v1/responses", {"model": "tiny", "input": "hi"})
    assert responses.json()["output"][0]["type"] == "reasoning"
    assert responses.json()["output"][0]["content"][0]["text"] == "Light scatters."
