"""A Responses answer carries its tokens per second to the console too, whole or streamed:
llama-server reports usage there as input/output tokens, inside the response object when
streamed (its ``response.completed`` event)."""

from __future__ import annotations

import httpx
import orjson

from tests.fakes.fake_service import (
    FakeModelService,
    FakeUpstream,
    Reply,
    UpstreamRequest,
    json_reply,
    sse_reply,
)

USAGE = {"input_tokens": 7, "output_tokens": 3, "total_tokens": 10}
RESPONSE = {"id": "resp_1", "object": "response", "model": "tiny", "status": "completed",
            "output": [], "usage": USAGE}


def _responses(request: UpstreamRequest) -> Reply:
    body = orjson.loads(request.body)
    if body.get("stream"):
        return sse_reply({"type": "response.created", "response": {**RESPONSE, "usage": None}},
                         {"type": "response.completed", "response": RESPONSE})
    return json_reply(RESPONSE)


async def test_responses_whole_and_streamed_carry_tokens_and_a_rate(
        client: httpx.AsyncClient, service: FakeModelService, upstream: FakeUpstream) -> None:
    upstream.responder = _responses
    for stream in (False, True):
        answer = await client.post("/v1/responses", json={
            "model": "tiny", "input": "hi", "stream": stream})
        assert answer.status_code == 200, answer.text
    events = [e.data for e in service.events.recent_requests if e.data["path"] == "/v1/responses"]
    assert [e["completion_tokens"] for e in events] == [3, 3]
    assert all(e["tokens_per_second"] and e["tokens_per_second"] > 0 for e in events), events
