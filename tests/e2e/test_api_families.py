"""The other API families on the real runner and model, each through its official client:
OpenAI's Responses API, Anthropic's Messages API, rerank, and llama.cpp's tokenize routes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
from anthropic.types import MessageParam

from tests.e2e.server import Served, gemma_models, start_server

pytestmark = pytest.mark.usefixtures("real_variants")
KEY = "sk-families-0123456789"
HI: list[MessageParam] = [{"role": "user", "content": "Say hi"}]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, gemma_path: Path) -> Iterator[Served]:
    models = gemma_models(gemma_path)
    models["ranker"] = {"source": str(gemma_path), "ctx_size": 1024, "reranking": True}
    server = start_server(tmp_path_factory.mktemp("families"), models,
                          {"SWITCHBOARD_API_KEYS": KEY})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def oai(served: Served) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{served.url}/v1", api_key=KEY, max_retries=0,
                       timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def claude(served: Served) -> Iterator[anthropic.Anthropic]:
    # The SDK sends the key as x-api-key, which is how Claude Code and others authenticate.
    with anthropic.Anthropic(base_url=served.url, api_key=KEY, max_retries=0,
                             timeout=120) as client:
        yield client


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}


def test_responses_create_returns_output_text_and_usage(oai: openai.OpenAI) -> None:
    response = oai.responses.create(model="gemma", input="Say hi", max_output_tokens=8)
    assert response.status == "completed" and response.output_text
    assert response.model == "gemma"  # the name sent, not the canonical one
    assert response.usage is not None and 0 < response.usage.output_tokens <= 8


def test_responses_stream_events_assemble_in_the_sdk(oai: openai.OpenAI) -> None:
    events = list(oai.responses.create(model="gemma3:270m", input="Say hi",
                                       max_output_tokens=8, stream=True))
    kinds = [event.type for event in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds
    numbers = [event.sequence_number for event in events]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    # The SDK's stream helper needs output_index and content_index on every delta.
    with oai.responses.stream(model="gemma3:270m", input="Say hi",
                              max_output_tokens=8) as stream:
        deltas = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert deltas and final.output_text == deltas


def test_responses_input_tokens_counts_the_prompt(served: Served) -> None:
    counted = httpx.post(f"{served.url}/v1/responses/input_tokens", headers=_auth(),
                         json={"model": "gemma3:270m", "input": "hello there"}, timeout=60)
    assert counted.status_code == 200 and counted.json()["input_tokens"] > 0


def test_anthropic_messages_create_stream_and_count(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(model="gemma", max_tokens=8, messages=HI)
    assert message.role == "assistant" and message.model == "gemma"
    assert message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert 0 < message.usage.output_tokens <= 8
    with claude.messages.stream(model="gemma3:270m", max_tokens=8, messages=HI) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.content[0].type == "text" and final.content[0].text == text
    counted = claude.messages.count_tokens(model="gemma3:270m", messages=HI)
    assert counted.input_tokens > 0


def test_anthropic_errors_are_anthropic_shaped(claude: anthropic.Anthropic,
                                               served: Served) -> None:
    with pytest.raises(anthropic.NotFoundError) as unknown:
        claude.messages.create(model="nope", max_tokens=8, messages=HI)
    assert unknown.value.body == {"type": "error", "error": {
        "type": "not_found_error", "message": "model 'nope' not found"}}
    with pytest.raises(anthropic.BadRequestError, match="max_tokens"):
        claude.messages.create(model="gemma", max_tokens=0, messages=HI)
    wrong = anthropic.Anthropic(base_url=served.url, api_key="wrong", max_retries=0)
    with wrong, pytest.raises(anthropic.AuthenticationError) as refused:
        wrong.messages.create(model="gemma", max_tokens=8, messages=HI)
    assert refused.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]


def test_rerank_scores_every_document_by_its_input_index(served: Served) -> None:
    documents = ["A cat is a small feline.", "Paris is in France.", "Dogs bark."]
    response = httpx.post(f"{served.url}/v1/rerank", headers=_auth(), timeout=60, json={
        "model": "ranker", "query": "What is a cat?", "documents": documents,
        "return_documents": True})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert sorted(r["index"] for r in results) == [0, 1, 2]
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True)  # most relevant first, as Jina and Cohere
    assert all(r["document"]["text"] == documents[r["index"]] for r in results)
    top = httpx.post(f"{served.url}/rerank", headers=_auth(), timeout=60, json={
        "model": "ranker", "query": "What is a cat?", "documents": documents, "top_n": 1})
    assert [r["index"] for r in top.json()["results"]] == [results[0]["index"]]


def test_rerank_on_a_chat_model_and_chat_on_a_reranker_are_400s(served: Served,
                                                                 oai: openai.OpenAI) -> None:
    wrong = httpx.post(f"{served.url}/v1/rerank", headers=_auth(), timeout=60, json={
        "model": "gemma", "query": "q", "documents": ["d"]})
    assert wrong.status_code == 400
    assert wrong.json()["error"]["code"] == "model_not_supported"
    assert "reranking: true" in wrong.json()["error"]["message"]
    with pytest.raises(openai.BadRequestError, match="reranking model"):
        oai.chat.completions.create(model="ranker", messages=[{"role": "user", "content": "x"}])


def test_tokenize_detokenize_and_apply_template_route_by_model(served: Served) -> None:
    tokens = httpx.post(f"{served.url}/tokenize", headers=_auth(), timeout=60,
                        json={"model": "gemma", "content": "hello world"}).json()["tokens"]
    assert tokens and all(isinstance(t, int) for t in tokens)
    text = httpx.post(f"{served.url}/detokenize", headers=_auth(), timeout=60,
                      json={"model": "gemma", "tokens": tokens}).json()["content"]
    assert text.strip() == "hello world"
    prompt = httpx.post(f"{served.url}/apply-template", headers=_auth(), timeout=60,
                        json={"model": "gemma", "messages": list(HI)}).json()["prompt"]
    assert "<start_of_turn>user" in prompt and "Say hi" in prompt
    refused = httpx.post(f"{served.url}/tokenize", timeout=60,
                         json={"model": "gemma", "content": "x"})
    assert refused.status_code == 401
    unknown = httpx.post(f"{served.url}/tokenize", headers=_auth(), timeout=60,
                         json={"model": "nope", "content": "x"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
