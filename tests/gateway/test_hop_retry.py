"""A hop to another node that cannot be reached is tried once more, elsewhere, before the
client is told; a local runner's failure is not retried."""

from __future__ import annotations

import socket

import httpx
import orjson

from tests.fakes.fake_service import FakeModelService, FakeUpstream

BODY = orjson.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}]})


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again: nothing listens there


async def _chat(client: httpx.AsyncClient, stream: bool = False) -> httpx.Response:
    body = BODY if not stream else BODY[:-1] + b',"stream":true}'
    return await client.post("/v1/chat/completions", content=body,
                             headers={"content-type": "application/json"})


async def test_a_dead_node_is_routed_around_and_the_request_served_once_more(
        client: httpx.AsyncClient, service: FakeModelService, upstream: FakeUpstream) -> None:
    service.hops = [("127.0.0.1", _dead_port(), b"/_node/chat")]
    answer = await _chat(client)
    assert answer.status_code == 200, answer.text
    assert len(service.acquired) == 2 and [h.node for h in service.failed_hops] == ["other-node"]
    assert upstream.paths == ["/v1/chat/completions"]  # the second lease: no prefix
    assert service.in_flight == 0 and service.released == 2


async def test_a_stream_is_retried_too_while_nothing_of_it_has_left(
        client: httpx.AsyncClient, service: FakeModelService, upstream: FakeUpstream) -> None:
    service.hops = [("127.0.0.1", _dead_port(), b"/_node/chat")]
    answer = await _chat(client, stream=True)
    assert answer.status_code == 200 and answer.text.rstrip().endswith("data: [DONE]")
    assert len(service.failed_hops) == 1


async def test_a_second_dead_node_is_the_clients_502_in_its_shape(
        client: httpx.AsyncClient, service: FakeModelService, upstream: FakeUpstream) -> None:
    service.hops = [("127.0.0.1", _dead_port(), b"/_node/chat")] * 2
    answer = await _chat(client)
    assert answer.status_code == 502
    assert "unavailable" in answer.json()["error"]["message"]
    assert len(service.acquired) == 2 and len(service.failed_hops) == 2
    assert upstream.requests == []


async def test_a_local_runner_that_cannot_be_reached_is_not_retried(
        client: httpx.AsyncClient, service: FakeModelService) -> None:
    service.upstream = ("127.0.0.1", _dead_port())
    answer = await _chat(client)
    assert answer.status_code == 502
    assert len(service.acquired) == 1 and service.failed_hops == []
