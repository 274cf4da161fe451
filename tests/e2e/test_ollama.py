"""Ollama's native API, driven by the official ``ollama`` Python client against the real
runner and model, with pulls from a registry on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import orjson
import pytest

from tests.e2e.server import Served, gemma_models, start_server, wait_until
from tests.fakes.registry import FakeRegistry

pytestmark = pytest.mark.usefixtures("real_variants")
HI = [{"role": "user", "content": "Say hi"}]
FEW = {"num_predict": 6, "temperature": 0}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, gemma_path: Path,
           tiny_registry: FakeRegistry) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("ollama")
    server = start_server(root, gemma_models(gemma_path), {
        "SWITCHBOARD_HOME": str(root / "home"), "SWITCHBOARD_REGISTRY": tiny_registry.host})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(served: Served) -> Iterator[ollama.Client]:
    with ollama.Client(host=served.url, timeout=120) as http:
        yield http


def _loaded(served: Served) -> list[tuple[str, str, int]]:
    models = httpx.get(f"{served.url}/api/ps", timeout=10).json()["models"]
    return [(m["name"], m["mode"], m["context_length"]) for m in models]


def test_ollama_chat_answers_with_its_message_and_counters(client: ollama.Client) -> None:
    reply = client.chat(model="gemma3:270m", messages=HI, options=FEW)
    assert reply.model == "gemma3:270m" and reply.done
    assert reply.message.role == "assistant" and reply.message.content
    assert reply.done_reason in ("stop", "length")
    assert reply.prompt_eval_count and reply.prompt_eval_count > 0
    assert reply.eval_count and 0 < reply.eval_count <= 6
    assert reply.total_duration and reply.eval_duration and reply.total_duration > 0


def test_ollama_chat_streams_pieces_then_one_done_line(client: ollama.Client) -> None:
    parts = list(client.chat(model="gemma", messages=HI, options=FEW, stream=True))
    assert len(parts) >= 2
    assert all(not p.done for p in parts[:-1]) and parts[-1].done
    assert parts[-1].eval_count and 0 < parts[-1].eval_count <= 6
    assert parts[-1].done_reason in ("stop", "length") and not parts[-1].message.content
    text = "".join(p.message.content or "" for p in parts)
    assert text and all(p.model == "gemma" for p in parts)  # the name the client sent


def test_ollama_generate_streamed_and_not(client: ollama.Client) -> None:
    whole = client.generate(model="gemma3:270m", prompt="Once upon a time", options=FEW)
    assert whole.done and whole.response
    pieces = list(client.generate(model="gemma3:270m", prompt="Once upon a time",
                                  options=FEW, stream=True))
    assert pieces[-1].done and "".join(p.response or "" for p in pieces)
    raw = client.generate(model="gemma3:270m", prompt="1, 2, 3,", raw=True, options=FEW)
    assert raw.done and raw.response


def test_ollama_embed_returns_unit_vectors_in_input_order(client: ollama.Client) -> None:
    both = client.embed(model="gemma3:270m", input=["the cat sat", "stock markets fell"])
    assert len(both.embeddings) == 2
    one = client.embed(model="gemma3:270m", input="stock markets fell")
    assert one.embeddings[0] == pytest.approx(both.embeddings[1], abs=1e-4)
    norm = sum(x * x for x in one.embeddings[0]) ** 0.5
    assert norm == pytest.approx(1.0, abs=1e-3)
    short = client.embed(model="gemma3:270m", input="x", dimensions=8)
    assert len(short.embeddings[0]) == 8
    assert sum(x * x for x in short.embeddings[0]) ** 0.5 == pytest.approx(1.0, abs=1e-3)


def test_ollama_list_and_show_describe_the_model(client: ollama.Client) -> None:
    listed = {m.model: m for m in client.list().models}
    gemma = listed["gemma3:270m"]
    assert gemma.size and gemma.size > 200_000_000
    assert gemma.details and gemma.details.family == "gemma3"
    assert gemma.details.quantization_level == "Q4_K_M"
    assert gemma.details.parameter_size == "268.10M"
    shown = client.show("gemma3:270m")
    assert shown.capabilities and "completion" in shown.capabilities
    assert shown.modelinfo and shown.modelinfo["general.architecture"] == "gemma3"
    assert shown.modelinfo["gemma3.context_length"] == 32768
    assert shown.template and "start_of_turn" in shown.template
    assert shown.parameters and "num_ctx 2048" in shown.parameters


def test_ollama_keep_alive_zero_unloads_and_empty_prompt_preloads(
    client: ollama.Client, served: Served
) -> None:
    loaded = client.generate(model="gemma3:270m")
    assert loaded.done and loaded.done_reason == "load"
    assert ("gemma3:270m", "chat", 2048) in _loaded(served)
    ps = client.ps()
    assert any(m.model == "gemma3:270m" and m.size and m.expires_at for m in ps.models)
    unloaded = client.generate(model="gemma3:270m", keep_alive=0)
    assert unloaded.done_reason == "unload"
    assert wait_until(lambda: not any(m[1] == "chat" for m in _loaded(served)), 5)
    # And after a real request, keep_alive=0 unloads as soon as it is answered.
    client.chat(model="gemma3:270m", messages=HI, options=FEW, keep_alive=0)
    assert wait_until(lambda: not any(m[1] == "chat" for m in _loaded(served)), 5)


def test_ollama_num_ctx_sizes_the_runner(client: ollama.Client, served: Served) -> None:
    client.chat(model="gemma3:270m", messages=HI, options={**FEW, "num_ctx": 1024})
    assert ("gemma3:270m", "chat", 1024) in _loaded(served)
    client.chat(model="gemma3:270m", messages=HI, options=FEW)
    assert ("gemma3:270m", "chat", 2048) in _loaded(served)


def test_ollama_pull_then_chat_then_delete(client: ollama.Client, served: Served) -> None:
    pulled = client.pull("tiny", insecure=True)
    assert pulled.status == "success"
    progress = list(client.pull("tiny", insecure=True, stream=True))
    assert progress[-1].status == "success"
    assert "tiny:latest" in [m.model for m in client.list().models]
    reply = client.chat(model="tiny", messages=HI, options=FEW)
    assert reply.message.content
    # Loaded, yet deleted: the runner is unloaded first, as `ollama rm` expects.
    assert client.delete("tiny").status == "success"
    assert "tiny:latest" not in [m.model for m in client.list().models]
    with pytest.raises(ollama.ResponseError) as missing:
        client.delete("tiny")
    assert missing.value.status_code == 404


def test_ollama_errors_are_ollama_shaped(client: ollama.Client, served: Served) -> None:
    with pytest.raises(ollama.ResponseError) as unknown:
        client.chat(model="nope", messages=HI)
    assert unknown.value.status_code == 404 and unknown.value.error == "model 'nope' not found"
    with pytest.raises(ollama.ResponseError) as streamed:
        list(client.chat(model="nope", messages=HI, stream=True))
    assert streamed.value.status_code == 404
    bad = httpx.post(f"{served.url}/api/chat", timeout=10, json={
        "model": "gemma3:270m", "messages": HI, "options": {"temperature": "hot"}})
    assert bad.status_code == 400 and bad.json() == {
        "error": "option 'temperature' has the wrong type: str"}
    for body in (b"{", b"[]", orjson.dumps({"model": 3}),
                 orjson.dumps({"model": "gemma3:270m", "messages": "hi"})):
        response = httpx.post(f"{served.url}/api/chat", content=body, timeout=10)
        assert response.status_code == 400 and isinstance(response.json()["error"], str)
    config_model = httpx.request("DELETE", f"{served.url}/api/delete", timeout=10,
                                 json={"model": "gemma3:270m"})
    assert config_model.status_code == 400 and "config" in config_model.json()["error"]


def test_ollama_version_is_served(served: Served) -> None:
    version = httpx.get(f"{served.url}/api/version", timeout=10).json()["version"]
    assert version and version[0].isdigit()
