"""POST /_node/{mode}/{path}: another node's already-translated request runs on this node's
runner as it is, and only with the cluster key."""

from __future__ import annotations

from pathlib import Path

import httpx
import orjson
import pytest

from runner.service import RunnerMode, RunnerOptions
from runner.settings import Settings
from tests.fakes.fake_service import Acquired, FakeModelService, FakeUpstream, gateway_client

BODY = orjson.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}]})
KEY = "fleet-secret"


def _settings(tmp_path: Path, **values: object) -> Settings:
    return Settings(home=tmp_path / "home", **values)


async def _post(client: httpx.AsyncClient, path: str, key: str | None,
                body: bytes = BODY) -> httpx.Response:
    headers = {"content-type": "application/json"}
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    return await client.post(path, content=body, headers=headers)


@pytest.mark.parametrize("key", [None, "wrong", "fleet-secret-but-longer"])
async def test_a_forged_node_request_is_refused_before_any_runner_is_asked(
        tmp_path: Path, service: FakeModelService, upstream: FakeUpstream,
        key: str | None) -> None:
    async with gateway_client(_settings(tmp_path, cluster_key=KEY), service) as client:
        answer = await _post(client, "/_node/chat/v1/chat/completions", key)
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "invalid_cluster_key"
    assert service.acquired == [] and upstream.requests == []


async def test_with_the_key_the_body_reaches_the_runner_of_that_mode_untouched(
        tmp_path: Path, service: FakeModelService, upstream: FakeUpstream) -> None:
    embed = orjson.dumps({"model": "tiny", "input": "hi"})
    async with gateway_client(_settings(tmp_path, cluster_key=KEY), service) as client:
        chat = await _post(client, "/_node/chat/v1/chat/completions", KEY)
        embedded = await _post(client, "/_node/embeddings/v1/embeddings", KEY, embed)
        primary = await _post(client, "/_node/primary/tokenize", KEY,
                              orjson.dumps({"model": "tiny", "content": "hi"}))
    assert [chat.status_code, embedded.status_code, primary.status_code] == [200, 200, 200]
    assert service.acquired == [
        Acquired("tiny", RunnerOptions(mode=RunnerMode.CHAT, here=True), None),
        Acquired("tiny", RunnerOptions(mode=RunnerMode.EMBEDDINGS, here=True), None),
        Acquired("tiny", RunnerOptions(mode=None, here=True), None)]
    assert upstream.paths == ["/v1/chat/completions", "/v1/embeddings", "/tokenize"]
    assert [r.body for r in upstream.requests[:2]] == [BODY, embed]  # byte for byte
    assert upstream.requests[0].headers["authorization"] == "Bearer runner-key"


async def test_without_a_cluster_key_the_client_keys_guard_it(
        tmp_path: Path, service: FakeModelService, upstream: FakeUpstream) -> None:
    async with gateway_client(_settings(tmp_path, api_keys=("client",)), service) as client:
        refused = await _post(client, "/_node/chat/v1/chat/completions", None)
        allowed = await _post(client, "/_node/chat/v1/chat/completions", "client")
    assert refused.status_code == 401 and allowed.status_code == 200


@pytest.mark.parametrize(("path", "says"), [
    ("/_node/chat/api/pull", "no runner route /api/pull"),
    ("/_node/chat/_node/chat/v1/chat/completions", "no runner route"),  # no second hop
    ("/_node/sideways/v1/chat/completions", "no runner mode"),
])
async def test_only_runner_paths_and_modes_are_served_on_the_hop(
        tmp_path: Path, service: FakeModelService, path: str, says: str) -> None:
    async with gateway_client(_settings(tmp_path, cluster_key=KEY), service) as client:
        answer = await _post(client, path, KEY)
    assert answer.status_code == 404 and says in answer.json()["error"]["message"]
    assert service.acquired == []


@pytest.mark.parametrize(("method", "path", "status"), [
    ("POST", "/_node/chat", 307), ("POST", "/_node/", 404),  # the router: a slash redirect
    ("GET", "/_node/chat/v1/chat/completions", 405),
])
async def test_hop_paths_without_a_mode_and_a_path_or_not_posted_go_to_the_router(
        tmp_path: Path, service: FakeModelService, method: str, path: str,
        status: int) -> None:
    async with gateway_client(_settings(tmp_path, cluster_key=KEY), service) as client:
        answer = await client.request(method, path, content=BODY,
                                      headers={"authorization": f"Bearer {KEY}"})
    assert answer.status_code == status and service.acquired == []


def test_a_prefixed_route_must_end_in_its_two_parameters() -> None:
    from starlette.routing import Route

    from gateway.relay_dispatch import RelayDispatch

    with pytest.raises(ValueError, match="ends in"):
        RelayDispatch(_no_app, [], prefixed=[Route("/_node/{mode}", _no_app)])


async def _no_app(*_: object) -> None:
    raise AssertionError("never called")
