"""/metrics, in process: the request histograms by model, each answer's time to first token,
queue wait and generation speed, the mode in a label of its own, no ``*_created`` series,
and a hop's tokens counted on the node that ran them only."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.fake_service import (
    FakeModelService,
    FakeUpstream,
    UpstreamRequest,
    chat_completion,
    json_reply,
)

HI = [{"role": "user", "content": "hi"}]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def _samples(client: httpx.AsyncClient) -> tuple[str, Samples]:
    text = (await client.get("/metrics")).text
    return text, {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_answers_record_first_token_queue_wait_speed_and_duration_by_model(
        client: httpx.AsyncClient) -> None:
    for stream in (False, True):
        answer = await client.post("/v1/chat/completions", json={
            "model": "tiny", "messages": HI, "stream": stream})
        assert answer.status_code == 200, answer.text
    text, samples = await _samples(client)
    assert "_created" not in text
    assert _value(samples, "switchboard_time_to_first_token_seconds_count", model="tiny") == 2
    assert _value(samples, "switchboard_queue_wait_seconds_count", model="tiny") == 2
    # The fake runner's timings: 2 tokens in 3.25 ms, both answers.
    assert _value(samples, "switchboard_generation_tokens_per_second_count", model="tiny") == 2
    assert _value(samples, "switchboard_generation_tokens_per_second_bucket",
                  model="tiny", le="500.0") == 0
    assert _value(samples, "switchboard_generation_tokens_per_second_bucket",
                  model="tiny", le="1000.0") == 2
    assert _value(samples, "switchboard_request_duration_seconds_count",
                  route="/v1/chat/completions", model="tiny") == 2
    assert _value(samples, "switchboard_completion_tokens_total", model="tiny") == 4


async def test_an_answer_without_timings_gets_a_speed_and_requests_without_a_model_none(
        client: httpx.AsyncClient) -> None:
    answer = await client.post("/v1/messages", json={
        "model": "tiny", "max_tokens": 8, "messages": HI})
    assert answer.status_code == 200, answer.text
    assert (await client.get("/v1/models")).status_code == 200
    _, samples = await _samples(client)
    assert _value(samples, "switchboard_generation_tokens_per_second_count", model="tiny") == 1
    assert _value(samples, "switchboard_completion_tokens_total", model="tiny") == 2
    assert _value(samples, "switchboard_request_duration_seconds_count",
                  route="/v1/models", model="") == 1


async def test_anthropic_answers_whole_and_streamed_carry_tokens_per_second_to_the_console(
        client: httpx.AsyncClient, service: FakeModelService) -> None:
    for stream in (False, True):
        answer = await client.post("/v1/messages", json={
            "model": "tiny", "max_tokens": 8, "messages": HI, "stream": stream})
        assert answer.status_code == 200, answer.text
    events = [e.data for e in service.events.recent_requests if e.data["path"] == "/v1/messages"]
    assert len(events) == 2
    for event in events:
        assert event["completion_tokens"] == 2 and event["tokens_per_second"] > 0, event


async def test_embeddings_have_no_first_token(client: httpx.AsyncClient) -> None:
    answer = await client.post("/v1/embeddings", json={"model": "tiny", "input": "hi"})
    assert answer.status_code == 200, answer.text
    _, samples = await _samples(client)
    assert _value(samples, "switchboard_prompt_tokens_total", model="tiny") == 2
    assert _value(samples, "switchboard_queue_wait_seconds_count", model="tiny") == 1
    assert _value(samples, "switchboard_time_to_first_token_seconds_count", model="tiny") == 0


async def test_a_hops_tokens_are_not_counted_on_the_node_that_forwarded_it(
        client: httpx.AsyncClient, service: FakeModelService, upstream: FakeUpstream) -> None:
    def any_path(request: UpstreamRequest) -> object:
        return json_reply(chat_completion("tiny"))

    upstream.responder = any_path  # type: ignore[assignment]
    service.hops = [(upstream.host, upstream.port, b"/_node/chat")]
    answer = await client.post("/v1/chat/completions", json={"model": "tiny", "messages": HI})
    assert answer.status_code == 200, answer.text
    assert upstream.paths == ["/_node/chat/v1/chat/completions"]
    _, samples = await _samples(client)
    assert _value(samples, "switchboard_requests_total",
                  route="/v1/chat/completions", status="200") == 1
    assert _value(samples, "switchboard_completion_tokens_total", model="tiny") == 0
    assert _value(samples, "switchboard_time_to_first_token_seconds_count", model="tiny") == 0
    assert _value(samples, "switchboard_queue_wait_seconds_count", model="tiny") == 0


async def test_a_loads_mode_is_a_label_of_its_own(
        client: httpx.AsyncClient, service: FakeModelService) -> None:
    for observer in service.load_observers:
        observer("tiny", "embeddings", 1.5)
    _, samples = await _samples(client)
    assert _value(samples, "switchboard_runner_load_seconds_count",
                  model="tiny", mode="embeddings") == 1
    assert not any(name.startswith("switchboard_") and "+" in dict(labels).get("model", "")
                   for name, labels in samples)
