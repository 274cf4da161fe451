"""A model's defaults (Ollama's SYSTEM, MESSAGE, stop) reach the runner in each API family's
body when the request brings none of its own, and never override what it brings."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from gateway.request_defaults import apply_defaults
from runner.service import RequestDefaults
from tests.fakes.fake_service import FakeModelService, FakeUpstream

DEFAULTS = RequestDefaults(system="Be brief.", stop=("<end>",),
                           messages=({"role": "user", "content": "Q?"},
                                     {"role": "assistant", "content": "A."}))
HI = [{"role": "user", "content": "hi"}]


def test_a_chat_without_a_system_prompt_gets_the_models_then_its_messages() -> None:
    data: dict[str, Any] = {"messages": list(HI)}
    assert apply_defaults(b"/v1/chat/completions", data, DEFAULTS)
    assert [m["role"] for m in data["messages"]] == ["system", "user", "assistant", "user"]
    assert data["messages"][0]["content"] == "Be brief." and data["stop"] == ["<end>"]


def test_a_chats_own_system_prompt_and_stop_are_kept() -> None:
    own = [{"role": "system", "content": "Mine."}, *HI]
    data: dict[str, Any] = {"messages": own, "stop": ["x"]}
    apply_defaults(b"/v1/chat/completions", data, DEFAULTS)
    assert data["messages"][0] == {"role": "system", "content": "Mine."}
    assert [m["content"] for m in data["messages"]] == ["Mine.", "Q?", "A.", "hi"]
    assert data["stop"] == ["x"]


def test_no_defaults_change_nothing() -> None:
    data: dict[str, Any] = {"messages": list(HI)}
    assert not apply_defaults(b"/v1/chat/completions", data, RequestDefaults())
    assert data == {"messages": HI}


async def _sent(client: httpx.AsyncClient, upstream: FakeUpstream, route: str,
                body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post(route, content=orjson.dumps(body),
                                 headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    sent: dict[str, Any] = upstream.last.json()
    return sent


@pytest.fixture
def with_defaults(service: FakeModelService) -> FakeModelService:
    service.defaults["tiny"] = DEFAULTS
    return service


@pytest.mark.usefixtures("with_defaults")
async def test_each_api_family_carries_the_defaults_to_the_runner(
        client: httpx.AsyncClient, upstream: FakeUpstream) -> None:
    chat = await _sent(client, upstream, "/v1/chat/completions",
                       {"model": "tiny", "messages": HI})
    assert chat["messages"][0]["content"] == "Be brief." and chat["stop"] == ["<end>"]
    ollama = await _sent(client, upstream, "/api/chat",
                         {"model": "tiny", "messages": HI, "stream": False})
    assert ollama["messages"][0] == {"role": "system", "content": "Be brief."}
    claude = await _sent(client, upstream, "/v1/messages",
                         {"model": "tiny", "max_tokens": 8, "messages": HI})
    assert claude["system"] == "Be brief." and claude["stop_sequences"] == ["<end>"]
    assert [m["content"] for m in claude["messages"]] == ["Q?", "A.", "hi"]
    responses = await _sent(client, upstream, "/v1/responses",
                            {"model": "tiny", "input": "hi"})
    assert responses["instructions"] == "Be brief."
    assert [m["content"] for m in responses["input"]] == ["Q?", "A.", "hi"]
    text = await _sent(client, upstream, "/v1/completions", {"model": "tiny", "prompt": "x"})
    assert text["stop"] == ["<end>"] and "messages" not in text
