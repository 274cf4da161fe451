"""The gateway in process (httpx's ASGITransport) over a fake ModelService and a fake
llama-server on loopback: routes reach the service and the right upstream path, and answers
come back whole, streamed, or translated (Ollama's NDJSON, Anthropic's Messages).

These sit beside the end-to-end tests on the real llama-server: they prove the gateway's own
part of each exchange, in milliseconds, with everything the fakes saw open to assertions.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from runner.service import ContextWindow, RunnerInfo, RunnerMode, RunnerOptions
from runner.settings import Settings
from tests.fakes.fake_service import (
    USAGE,
    Acquired,
    FakeModelService,
    FakeUpstream,
    Reply,
    anthropic_stream,
    chat_chunk,
    chat_stream,
    gateway_client,
    json_reply,
    sse,
    sse_reply,
)

HI = [{"role": "user", "content": "hi"}]


async def post(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> httpx.Response:
    """POST exactly these bytes (orjson's compact form), so a test can compare them with what
    the upstream got."""
    return await client.post(path, content=orjson.dumps(body),
                             headers={"content-type": "application/json"})


def ndjson(response: httpx.Response) -> list[dict[str, Any]]:
    lines = response.content.split(b"\n")
    assert lines[-1] == b"", "NDJSON must end with a newline"
    return [orjson.loads(line) for line in lines[:-1]]


def assert_released(service: FakeModelService, leases: int = 1) -> None:
    assert service.in_flight == 0, "a lease is still held after the response"
    assert service.released == leases


# -- the lifespan ----------------------------------------------------------------------------


async def test_the_lifespan_starts_the_service_wires_its_observers_and_closes_it(
        settings: Settings, service: FakeModelService) -> None:
    assert not service.started
    async with gateway_client(settings, service) as client:
        assert service.started and not service.closed
        assert len(service.load_observers) == 1 and len(service.stop_observers) == 1
        assert (await client.get("/health")).json() == {"status": "ok"}
    assert service.closed


# -- dispatch: route -> service -> upstream path ---------------------------------------------

_CHAT_BODY = {"model": "tiny", "messages": HI, "max_tokens": 8}
DISPATCH = [
    ("/v1/chat/completions", _CHAT_BODY, "/v1/chat/completions", None),
    ("/v1/completions", {"model": "tiny", "prompt": "hi"}, "/v1/completions", None),
    ("/v1/embeddings", {"model": "tiny", "input": "hi"}, "/v1/embeddings",
     RunnerOptions(mode=RunnerMode.EMBEDDINGS)),
    ("/v1/responses", {"model": "tiny", "input": "hi"}, "/v1/responses", None),
    ("/v1/messages", _CHAT_BODY, "/v1/messages", None),
    ("/v1/messages/count_tokens", {"model": "tiny", "messages": HI},
     "/v1/messages/count_tokens", None),
    ("/v1/rerank", {"model": "tiny", "query": "q", "documents": ["d"]}, "/v1/rerank",
     RunnerOptions(mode=RunnerMode.RERANKING)),
    ("/rerank", {"model": "tiny", "query": "q", "documents": ["d"]}, "/v1/rerank",
     RunnerOptions(mode=RunnerMode.RERANKING)),
    ("/tokenize", {"model": "tiny", "content": "hi"}, "/tokenize", RunnerOptions(mode=None)),
    ("/detokenize", {"model": "tiny", "tokens": [1, 2]}, "/detokenize",
     RunnerOptions(mode=None)),
    ("/apply-template", {"model": "tiny", "messages": HI}, "/apply-template",
     RunnerOptions(mode=None)),
]


@pytest.mark.parametrize(("route", "body", "upstream_path", "options"), DISPATCH,
                         ids=[case[0] for case in DISPATCH])
async def test_a_route_leases_its_runner_and_relays_the_body_untouched_to_its_path(
        client: httpx.AsyncClient, service: FakeModelService, upstream: FakeUpstream,
        route: str, body: dict[str, Any], upstream_path: str,
        options: RunnerOptions | None) -> None:
    response = await post(client, route, body)
    assert response.status_code == 200, response.text
    assert service.acquired == [Acquired("tiny", options, None)]
    assert upstream.paths == [upstream_path]
    sent = upstream.last
    assert sent.method == "POST"
    assert sent.headers["authorization"] == "Bearer runner-key"  # the lease's key
    assert sent.body == orjson.dumps(body)  # byte for byte: nothing had to change
    expected = upstream.canned(sent)
    assert response.content == b"".join(expected.parts)
    assert response.headers["content-type"] == "application/json"
    assert response.headers["server-timing"].startswith("queue;dur=")
    assert_released(service)


async def test_keep_alive_is_taken_out_of_the_body_and_given_to_acquire(
        client: httpx.AsyncClient, service: FakeModelService, upstream: FakeUpstream) -> None:
    response = await post(client, "/v1/chat/completions",
                          {"model": "tiny", "messages": HI, "keep_alive": "10m"})
    assert response.status_code == 200, response.text
    assert service.acquired == [Acquired("tiny", None, 600.0)]
    assert upstream.last.json() == {"model": "tiny", "messages": HI}


async def test_an_invalid_keep_alive_is_a_400_before_any_runner_is_leased(
        client: httpx.AsyncClient, service: FakeModelService, upstream: FakeUpstream) -> None:
    response = await post(client, "/v1/chat/completions",
                          {"model": "tiny", "messages": HI, "keep_alive": "soon"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "keep_alive"
    assert service.acquired == [] and upstream.requests == []


async def test_a_field_outside_the_allowlist_never_reaches_the_runner(
        client: httpx.AsyncClient, upstream: FakeUpstream) -> None:
    response = await post(client, "/v1/chat/completions",
                          {"model": "tiny", "messages": HI, "id_slot": 3})
    assert response.status_code == 200, response.text
    assert upstream.last.json() == {"model": "tiny", "messages": HI}


async def test_max_completion_tokens_reaches_the_runner_as_max_tokens(
        client: httpx.AsyncClient, upstream: FakeUpstream) -> None:
    response = await post(client, "/v1/chat/completions",
                          {"model": "tiny", "messages": HI, "max_completion_tokens": 5})
    assert response.status_code == 200, response.text
    assert upstream.last.json() == {"model": "tiny", "messages": HI, "max_tokens": 5}


async def test_the_client_key_is_not_passed_to_the_runner(
        tmp_path: Path, service: FakeModelService, upstream: FakeUpstream) -> None:
    settings = Settings(home=tmp_path, api_keys=("client-key",))
    async with gateway_client(settings, service) as client:
        response = await client.post("/v1/chat/completions",
                                     json={"model": "tiny", "messages": HI},
                                     headers={"x-api-key": "client-key"})
    assert response.status_code == 200, response.text
    assert upstream.last.headers["authorization"] == "Bearer runner-key"
    assert "x-api-key" not in upstream.last.headers


# -- whole and streamed answers --------------------------------------------------------------


async def test_a_whole_answer_for_an_alias_names_the_alias_the_client_sent(
        client: httpx.AsyncClient, service: FakeModelService, upstream: FakeUpstream) -> None:
    response = await post(client, "/v1/chat/completions", {"model": "tiny-alias", "messages": HI})
    assert response.status_code == 200, response.text
    assert service.acquired == [Acquired("tiny-alias", None, None)]
    assert upstream.last.json()["model"] == "tiny-alias"  # the body went as it was
    answer = response.json()
    assert answer["model"] == "tiny-alias"
    assert answer["choices"][0]["message"]["content"] == "fake reply"


async def test_a_streamed_chat_is_relayed_event_for_event_with_sse_headers(
        client: httpx.AsyncClient, service: FakeModelService, upstream: FakeUpstream) -> None:
    response = await post(client, "/v1/chat/completions",
                          {"model": "tiny", "messages": HI, "stream": True})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/event-stream"
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    assert "content-length" not in response.headers
    assert response.content == b"".join(chat_stream("tiny").parts)
    assert upstream.last.json()["stream"] is True
    assert_released(service)


async def test_every_streamed_event_for_an_alias_names_the_alias(
        client: httpx.AsyncClient, upstream: FakeUpstream) -> None:
    response = await post(client, "/v1/chat/completions",
                          {"model": "tiny-alias", "messages": HI, "stream": True})
    assert response.status_code == 200, response.text
    events = response.content.split(b"\n\n")
    assert events[-2:] == [b"data: [DONE]", b""]
    models = [orjson.loads(event.removeprefix(b"data: "))["model"] for event in events[:-2]]
    assert models == ["tiny-alias"] * 3


async def test_an_event_split_across_the_runners_chunks_arrives_whole_and_in_order(
        client: httpx.AsyncClient, upstream: FakeUpstream) -> None:
    whole = sse(chat_chunk("tiny", "one"), chat_chunk("tiny", "two"))
    joined = b"".join(whole)
    cut = len(whole[0]) + 10  # inside the second event
    upstream.responder = lambda request: Reply(200, "text/event-stream",
                                               (joined[:cut], joined[cut:], b"data: [DONE]\n\n"),
                                               chunked=True)
    response = await post(client, "/v1/chat/completions",
                          {"model": "tiny-alias", "messages": HI, "stream": True})
    assert response.status_code == 200, response.text
    expected = joined.replace(b'"model":"tiny"', b'"model":"tiny-alias"') + b"data: [DONE]\n\n"
    assert response.content == expected


async def _old_style_error(client: httpx.AsyncClient, upstream: FakeUpstream
                           ) -> dict[str, Any]:
    """The error event the client gets for an older llama-server's 'error: {...}' line."""
    upstream.responder = lambda request: sse_reply(
        chat_chunk("tiny", "partial"),
        b'error: {"code":500,"message":"slot crashed","type":"server_error"}\n\n')
    response = await post(client, "/v1/chat/completions",
                          {"model": "tiny", "messages": HI, "stream": True})
    assert response.status_code == 200  # the head went out with the first event
    first, error, end = response.content.split(b"\n\n")
    assert orjson.loads(first.removeprefix(b"data: "))["choices"][0]["delta"] == {
        "content": "partial"}
    assert end == b""
    assert error.startswith(b"data: ")
    body: dict[str, Any] = orjson.loads(error.removeprefix(b"data: "))
    return body


async def test_an_old_style_error_line_mid_stream_becomes_an_openai_error_event(
        client: httpx.AsyncClient, service: FakeModelService, upstream: FakeUpstream) -> None:
    body = await _old_style_error(client, upstream)
    assert sorted(body["error"]) == ["code", "message", "param", "type"]
    assert body["error"]["code"] is None  # not llama-server's integer
    assert body["error"]["type"] == "server_error"
    assert "slot crashed" in body["error"]["message"]
    assert_released(service)


async def test_an_old_style_error_lines_message_is_the_runners_message(
        client: httpx.AsyncClient, upstream: FakeUpstream) -> None:
    body = await _old_style_error(client, upstream)
    assert body["error"]["message"] == "slot crashed"


async def test_a_runner_error_to_a_stream_request_comes_back_whole_with_its_status(
        client: httpx.AsyncClient, upstream: FakeUpstream) -> None:
    upstream.responder = lambda request: json_reply(
        {"error": {"code": 400, "message": "bad grammar", "type": "invalid_request_error"}}, 400)
    response = await post(client, "/v1/chat/completions",
                          {"model": "tiny", "messages": HI, "stream": True})
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"error": {"message": "bad grammar",
                                         "type": "invalid_request_error", "param": None,
                                         "code": None}}


async def test_an_answer_past_max_answer_bytes_is_a_502_and_the_lease_is_released(
        tmp_path: Path, service: FakeModelService, upstream: FakeUpstream) -> None:
    upstream.responder = lambda request: json_reply({"content": "x" * 5000})
    async with gateway_client(Settings(home=tmp_path, max_answer_bytes=1000), service) as client:
        response = await post(client, "/v1/chat/completions", {"model": "tiny", "messages": HI})
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "answer_too_large"
    assert_released(service)


async def test_an_unreachable_runner_is_a_502_naming_it_and_the_lease_is_released(
        settings: Settings) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago, and nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    service = FakeModelService(upstream=("127.0.0.1", port))
    async with gateway_client(settings, service) as client:
        response = await post(client, "/v1/chat/completions", {"model": "tiny", "messages": HI})
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["type"] == "server_error"
    assert error["message"].startswith("runner for 'tiny' is unavailable")
    assert_released(service)


async def test_a_prompt_past_the_leased_context_is_refused_before_the_runner_sees_it(
        settings: Settings, upstream: FakeUpstream) -> None:
    service = FakeModelService(upstream=(upstream.host, upstream.port),
                               context=ContextWindow(tokens=8, longest_token=2))
    async with gateway_client(settings, service) as client:
        response = await post(client, "/v1/chat/completions",
                              {"model": "tiny", "messages": [{"role": "user",
                                                              "content": "x" * 200}]})
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("context_length_exceeded", "messages")
    assert upstream.requests == []
    assert_released(service)


async def test_consecutive_requests_each_reach_the_runner_and_release_their_lease(
        client: httpx.AsyncClient, service: FakeModelService, upstream: FakeUpstream) -> None:
    for _ in range(3):
        response = await post(client, "/v1/completions", {"model": "tiny", "prompt": "hi"})
        assert response.status_code == 200, response.text
    assert upstream.paths == ["/v1/completions"] * 3
    assert_released(service, 3)


# -- Anthropic's Messages ---------------------------------------------------------------------


async def test_a_streamed_anthropic_message_keeps_its_event_lines(
        client: httpx.AsyncClient, upstream: FakeUpstream) -> None:
    response = await post(client, "/v1/messages",
                          {"model": "tiny", "messages": HI, "max_tokens": 8, "stream": True})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/event-stream"
    assert response.content == b"".join(anthropic_stream("tiny").parts)
    assert [line for line in response.content.split(b"\n") if line.startswith(b"event:")] == [
        b"event: message_start", b"event: content_block_delta", b"event: message_delta",
        b"event: message_stop"]


async def test_an_anthropic_message_without_max_tokens_is_refused_in_anthropics_shape(
        client: httpx.AsyncClient, service: FakeModelService) -> None:
    response = await post(client, "/v1/messages", {"model": "tiny", "messages": HI})
    assert response.status_code == 400
    assert response.json() == {"type": "error", "error": {
        "type": "invalid_request_error",
        "message": "'max_tokens' is required and must be a positive integer"}}
    assert service.acquired == []


# -- Ollama's generation API, translated ------------------------------------------------------


async def test_ollama_chat_becomes_a_chat_completion_and_its_answer_ollamas(
        client: httpx.AsyncClient, service: FakeModelService, upstream: FakeUpstream) -> None:
    response = await post(client, "/api/chat", {
        "model": "tiny-alias", "messages": HI, "stream": False, "keep_alive": "5m",
        "options": {"temperature": 0.5, "num_ctx": 2048, "num_predict": 16}})
    assert response.status_code == 200, response.text
    assert service.acquired == [Acquired("tiny-alias", RunnerOptions(ctx_size=2048), 300.0)]
    assert upstream.paths == ["/v1/chat/completions"]
    assert upstream.last.json() == {"model": "tiny-alias", "messages": HI, "temperature": 0.5,
                                    "max_tokens": 16}
    answer = response.json()
    assert answer["model"] == "tiny-alias"
    assert answer["message"] == {"role": "assistant", "content": "fake reply"}
    assert answer["done"] is True and answer["done_reason"] == "stop"
    assert (answer["prompt_eval_count"], answer["eval_count"]) == (7, 2)
    assert (answer["prompt_eval_duration"], answer["eval_duration"]) == (1_500_000, 3_250_000)
    assert answer["created_at"].endswith("Z")
    assert_released(service)


async def test_ollama_chat_streams_ndjson_by_default_ending_in_a_done_line(
        client: httpx.AsyncClient, service: FakeModelService, upstream: FakeUpstream) -> None:
    response = await post(client, "/api/chat", {"model": "tiny", "messages": HI})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-ndjson"
    sent = upstream.last.json()
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    lines = ndjson(response)
    assert [(line["message"]["content"], line["done"]) for line in lines] == [
        ("fake ", False), ("reply", False), ("", True)]
    assert {line["model"] for line in lines} == {"tiny"}
    assert lines[-1]["eval_count"] == USAGE["completion_tokens"]
    assert lines[-1]["done_reason"] == "stop"
    assert_released(service)


async def test_ollama_tool_call_fragments_arrive_as_one_call_with_parsed_arguments(
        client: httpx.AsyncClient, upstream: FakeUpstream) -> None:
    def fragment(name: str | None, arguments: str) -> dict[str, Any]:
        function = {"arguments": arguments} | ({"name": name} if name else {})
        return chat_chunk("tiny", None, None) | {"choices": [
            {"index": 0, "finish_reason": None,
             "delta": {"tool_calls": [{"index": 0, "function": function}]}}]}

    upstream.responder = lambda request: sse_reply(
        fragment("weather", '{"city": '), fragment(None, '"Oslo"}'),
        chat_chunk("tiny", finish="tool_calls"), b"data: [DONE]\n\n")
    response = await post(client, "/api/chat", {"model": "tiny", "messages": HI})
    lines = ndjson(response)
    calls = [line["message"]["tool_calls"] for line in lines if "tool_calls" in line["message"]]
    assert calls == [[{"function": {"name": "weather", "arguments": {"city": "Oslo"}}}]]
    assert lines[-1]["done"] is True and lines[-1]["done_reason"] == "stop"


async def test_an_error_mid_ollama_stream_is_an_error_line_and_no_done_line(
        client: httpx.AsyncClient, service: FakeModelService, upstream: FakeUpstream) -> None:
    upstream.responder = lambda request: sse_reply(
        chat_chunk("tiny", "partial"),
        {"error": {"code": 500, "message": "slot crashed", "type": "server_error"}})
    response = await post(client, "/api/chat", {"model": "tiny", "messages": HI})
    lines = ndjson(response)
    assert lines[0]["message"]["content"] == "partial"
    assert lines[1:] == [{"error": "slot crashed"}]
    assert_released(service)


async def test_ollama_generate_becomes_a_chat_with_its_system_prompt(
        client: httpx.AsyncClient, upstream: FakeUpstream) -> None:
    response = await post(client, "/api/generate", {
        "model": "tiny", "prompt": "hi", "system": "be brief", "stream": False})
    assert response.status_code == 200, response.text
    assert upstream.paths == ["/v1/chat/completions"]
    assert upstream.last.json()["messages"] == [{"role": "system", "content": "be brief"},
                                                {"role": "user", "content": "hi"}]
    answer = response.json()
    assert answer["response"] == "fake reply" and "message" not in answer
    assert answer["done"] is True


async def test_raw_ollama_generate_becomes_a_text_completion(
        client: httpx.AsyncClient, upstream: FakeUpstream) -> None:
    response = await post(client, "/api/generate",
                          {"model": "tiny", "prompt": "[INST]hi", "raw": True, "stream": False})
    assert response.status_code == 200, response.text
    assert upstream.paths == ["/v1/completions"]
    assert upstream.last.json() == {"model": "tiny", "prompt": "[INST]hi"}
    assert response.json()["response"] == "fake text"


async def test_streamed_ollama_generate_sends_response_pieces_as_ndjson(
        client: httpx.AsyncClient, upstream: FakeUpstream) -> None:
    response = await post(client, "/api/generate", {"model": "tiny", "prompt": "hi"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-ndjson"
    lines = ndjson(response)
    assert [(line["response"], line["done"]) for line in lines] == [
        ("fake ", False), ("reply", False), ("", True)]


async def test_ollama_embed_translates_the_runners_vectors(
        client: httpx.AsyncClient, service: FakeModelService, upstream: FakeUpstream) -> None:
    response = await post(client, "/api/embed", {"model": "tiny", "input": "hi"})
    assert response.status_code == 200, response.text
    assert service.acquired == [Acquired("tiny", RunnerOptions(mode=RunnerMode.EMBEDDINGS),
                                         None)]
    assert upstream.last.json() == {"model": "tiny", "input": ["hi"],
                                    "encoding_format": "float"}
    answer = response.json()
    assert answer["embeddings"] == [[0.5, -0.5]] and answer["prompt_eval_count"] == 2


async def test_an_ollama_chat_without_messages_only_loads_the_model(
        client: httpx.AsyncClient, service: FakeModelService, upstream: FakeUpstream) -> None:
    response = await post(client, "/api/chat", {"model": "tiny", "keep_alive": 60})
    assert response.status_code == 200, response.text
    assert service.acquired == [Acquired("tiny", RunnerOptions(), 60.0)]
    assert upstream.requests == []
    answer = response.json()
    assert (answer["done"], answer["done_reason"]) == (True, "load")
    assert_released(service)


async def test_an_ollama_generate_with_keep_alive_zero_and_no_prompt_unloads(
        client: httpx.AsyncClient, service: FakeModelService, upstream: FakeUpstream) -> None:
    response = await post(client, "/api/generate", {"model": "tiny", "keep_alive": 0})
    assert response.status_code == 200, response.text
    assert service.unloaded == ["tiny"] and service.acquired == []
    assert upstream.requests == []
    assert response.json()["done_reason"] == "unload"


# -- routes the service answers itself --------------------------------------------------------


async def test_v1_models_lists_the_services_names_and_finds_an_alias(
        settings: Settings, upstream: FakeUpstream) -> None:
    service = FakeModelService(upstream=(upstream.host, upstream.port),
                               models={"tiny": ("tiny-alias",), "big": ()})
    async with gateway_client(settings, service) as client:
        listed = (await client.get("/v1/models")).json()
        found = await client.get("/v1/models/tiny-alias")
    assert [entry["id"] for entry in listed["data"]] == ["tiny", "big"]
    assert found.status_code == 200 and found.json()["id"] == "tiny-alias"
    assert service.acquired == []


async def test_ollama_tags_and_show_answer_from_the_services_facts(
        client: httpx.AsyncClient) -> None:
    tags = (await client.get("/api/tags")).json()
    assert [(m["name"], m["size"], m["details"]["quantization_level"])
            for m in tags["models"]] == [("tiny", 1234, "Q4_K_M")]
    shown = await post(client, "/api/show", {"model": "tiny-alias"})
    assert shown.status_code == 200, shown.text
    assert shown.json()["details"]["family"] == "llama"
    assert "FROM /models/tiny.gguf" in shown.json()["modelfile"]


async def test_api_ps_shows_the_services_runners(settings: Settings,
                                                 upstream: FakeUpstream) -> None:
    runner = RunnerInfo(runner="tiny", model="tiny", mode="chat", pid=4321, variant="cpu",
                        ctx_size=4096, parallel=2, in_flight=1, draining=False,
                        expires_at=None, keep_alive=300.0, load_seconds=1.25,
                        estimated_bytes=1000, actual_bytes=900)
    service = FakeModelService(upstream=(upstream.host, upstream.port), runners=[runner])
    async with gateway_client(settings, service) as client:
        shown = (await client.get("/api/ps")).json()
    (entry,) = shown["models"]
    assert (entry["name"], entry["pid"], entry["size"], entry["in_flight"]) == (
        "tiny", 4321, 900, 1)
    assert entry["digest"] == "ab" * 32  # from the service's facts


async def test_api_unload_asks_the_service_and_says_whether_it_was_loaded(
        settings: Settings, upstream: FakeUpstream) -> None:
    service = FakeModelService(upstream=(upstream.host, upstream.port), loaded_models={"tiny"})
    async with gateway_client(settings, service) as client:
        loaded = await post(client, "/api/unload", {"model": "tiny"})
        idle = await post(client, "/api/unload", {"model": "tiny-alias"})
    assert loaded.json() == {"model": "tiny", "unloaded": True}
    assert idle.json() == {"model": "tiny-alias", "unloaded": False}
    assert service.unloaded == ["tiny", "tiny-alias"]


async def test_ollama_delete_asks_the_service_to_delete(
        client: httpx.AsyncClient, service: FakeModelService) -> None:
    response = await client.request("DELETE", "/api/delete", json={"model": "tiny"})
    assert response.status_code == 200
    assert service.deleted == ["tiny"]


async def test_an_unstreamed_pull_runs_the_services_job(
        client: httpx.AsyncClient, service: FakeModelService) -> None:
    response = await post(client, "/api/pull", {"model": "tiny", "stream": False})
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "success"}
    assert service.pulled == ["tiny"]
