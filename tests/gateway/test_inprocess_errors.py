"""The gateway's errors in each API family's shape, in process over a fake ModelService and a
fake llama-server: the service's refusals, the runner's own errors, auth and body limits.

- OpenAI (``/v1/*``): ``{"error": {message, type, param, code}}``
- Anthropic (``/v1/messages``): ``{"type": "error", "error": {type, message}}``
- Ollama (``/api/*``): ``{"error": message}``, with ``code`` beside it where there is one
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from runner.service import (
    ModelInUseError,
    ModelNotFoundError,
    ModelTooLargeError,
    ModeNotServedError,
    QueueFullError,
    RunnerMode,
    RunnerStartError,
    ServiceError,
    ShuttingDownError,
)
from runner.settings import Settings
from tests.fakes.fake_service import (
    FakeModelService,
    FakeUpstream,
    gateway_client,
    json_reply,
)

HI = [{"role": "user", "content": "hi"}]


# -- what each family's error must look like -------------------------------------------------


@dataclass(frozen=True)
class Expected:
    """One error as the gateway should answer it, in any family."""

    status: int
    message: str
    openai_type: str
    anthropic_type: str
    param: str | None = None
    code: str | None = None


@dataclass(frozen=True)
class Family:
    name: str
    path: str
    body: dict[str, Any]

    def assert_error(self, response: httpx.Response, expected: Expected) -> None:
        assert response.status_code == expected.status, response.text
        assert response.headers["content-type"] == "application/json"
        body = response.json()
        if self.name == "openai":
            assert body == {"error": {"message": expected.message, "type": expected.openai_type,
                                      "param": expected.param, "code": expected.code}}
        elif self.name == "anthropic":
            assert body == {"type": "error", "error": {"type": expected.anthropic_type,
                                                       "message": expected.message}}
        else:
            assert body == ({"error": expected.message, "code": expected.code} if expected.code
                            else {"error": expected.message})


FAMILIES = [
    Family("openai", "/v1/chat/completions", {"model": "tiny", "messages": HI}),
    Family("anthropic", "/v1/messages", {"model": "tiny", "messages": HI, "max_tokens": 8}),
    Family("ollama", "/api/chat", {"model": "tiny", "messages": HI}),
    Family("ollama", "/api/generate", {"model": "tiny", "prompt": "hi"}),
]
FAMILY_IDS = [family.path for family in FAMILIES]
OPENAI, ANTHROPIC, OLLAMA_CHAT = FAMILIES[0], FAMILIES[1], FAMILIES[2]


# -- the service's refusals -------------------------------------------------------------------

REFUSALS: list[tuple[str, ServiceError, Expected]] = [
    ("not-found", ModelNotFoundError("tiny"),
     Expected(404, "model 'tiny' not found", "not_found_error", "not_found_error", "model",
              "model_not_found")),
    ("queue-full", QueueFullError(8, retry_after=7),
     Expected(503, "server busy: 8 requests are already waiting for a model",
              "unavailable_error", "overloaded_error", None, "queue_full")),
    ("too-large", ModelTooLargeError("tiny", 10 << 30, 1 << 30),
     Expected(400, str(ModelTooLargeError("tiny", 10 << 30, 1 << 30)),
              "invalid_request_error", "invalid_request_error", "model", "insufficient_memory")),
    ("mode-not-served", ModeNotServedError("tiny", RunnerMode.CHAT,
                                           frozenset({RunnerMode.EMBEDDINGS})),
     Expected(400, "model 'tiny' is an embeddings model: use /v1/embeddings",
              "invalid_request_error", "invalid_request_error", "model",
              "model_not_supported")),
    ("shutting-down", ShuttingDownError("switchboard is shutting down"),
     Expected(503, "switchboard is shutting down", "unavailable_error", "overloaded_error")),
    ("failed-to-load", RunnerStartError("llama-server exited with code 3"),
     Expected(503, "model 'tiny' failed to load: llama-server exited with code 3",
              "unavailable_error", "overloaded_error")),
]


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
@pytest.mark.parametrize(("refusal", "expected"), [case[1:] for case in REFUSALS],
                         ids=[case[0] for case in REFUSALS])
async def test_a_refusal_of_the_service_is_answered_in_the_routes_family(
        settings: Settings, upstream: FakeUpstream, family: Family, refusal: ServiceError,
        expected: Expected) -> None:
    service = FakeModelService(upstream=(upstream.host, upstream.port),
                               refusals={"acquire": refusal})
    async with gateway_client(settings, service) as client:
        response = await client.post(family.path, json=family.body)
    family.assert_error(response, expected)
    assert [call.model for call in service.acquired] == ["tiny"]
    assert upstream.requests == []  # refused before any runner was reached
    if expected.status < 500:  # the OpenAI SDK would retry it to the same end
        assert response.headers["x-should-retry"] == "false"
    else:
        assert "x-should-retry" not in response.headers


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
async def test_a_full_queue_says_when_to_retry(settings: Settings, upstream: FakeUpstream,
                                               family: Family) -> None:
    service = FakeModelService(upstream=(upstream.host, upstream.port),
                               refusals={"acquire": QueueFullError(8, retry_after=7)})
    async with gateway_client(settings, service) as client:
        response = await client.post(family.path, json=family.body)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "7"


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
async def test_a_name_the_service_does_not_know_is_model_not_found(
        client: httpx.AsyncClient, service: FakeModelService, upstream: FakeUpstream,
        family: Family) -> None:
    response = await client.post(family.path, json={**family.body, "model": "nope"})
    family.assert_error(response, Expected(404, "model 'nope' not found", "not_found_error",
                                           "not_found_error", "model", "model_not_found"))
    assert [call.model for call in service.acquired] == ["nope"]
    assert upstream.requests == []


async def test_embeddings_on_a_chat_model_name_the_route_to_use(
        settings: Settings, upstream: FakeUpstream) -> None:
    refusal = ModeNotServedError("tiny", RunnerMode.EMBEDDINGS, frozenset({RunnerMode.CHAT}))
    service = FakeModelService(upstream=(upstream.host, upstream.port),
                               refusals={"acquire": refusal})
    async with gateway_client(settings, service) as client:
        response = await client.post("/v1/embeddings", json={"model": "tiny", "input": "hi"})
    OPENAI.assert_error(response, Expected(
        400, "model 'tiny' is a chat model: use /v1/chat/completions", "invalid_request_error",
        "invalid_request_error", "model", "model_not_supported"))


async def test_deleting_a_model_in_use_is_a_409_in_ollamas_shape(
        settings: Settings, upstream: FakeUpstream) -> None:
    refusal = ModelInUseError("tiny", "1 request in flight")
    service = FakeModelService(upstream=(upstream.host, upstream.port),
                               refusals={"delete": refusal})
    async with gateway_client(settings, service) as client:
        response = await client.request("DELETE", "/api/delete", json={"model": "tiny"})
    assert response.status_code == 409
    assert response.json() == {"error": str(refusal)}
    assert "in use (1 request in flight)" in response.json()["error"]
    assert "x-should-retry" not in response.headers  # 409: it may succeed once idle
    assert service.deleted == []


async def test_deleting_an_unknown_model_is_model_not_found_in_ollamas_shape(
        client: httpx.AsyncClient, service: FakeModelService) -> None:
    response = await client.request("DELETE", "/api/delete", json={"model": "nope"})
    assert response.status_code == 404
    assert response.json() == {"error": "model 'nope' not found", "code": "model_not_found"}
    assert service.deleted == []


async def test_showing_an_unknown_model_is_model_not_found_in_ollamas_shape(
        client: httpx.AsyncClient) -> None:
    response = await client.post("/api/show", json={"model": "nope"})
    assert response.status_code == 404
    assert response.json() == {"error": "model 'nope' not found", "code": "model_not_found"}


async def test_an_unknown_model_id_is_model_not_found_in_openais_shape(
        client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/models/nope")
    OPENAI.assert_error(response, Expected(404, "model 'nope' not found", "not_found_error",
                                           "not_found_error", "model", "model_not_found"))


async def test_an_unload_while_shutting_down_is_a_503_in_ollamas_shape(
        settings: Settings, upstream: FakeUpstream) -> None:
    service = FakeModelService(upstream=(upstream.host, upstream.port),
                               refusals={"unload": ShuttingDownError("switchboard is stopping")})
    async with gateway_client(settings, service) as client:
        response = await client.post("/api/unload", json={"model": "tiny"})
    assert response.status_code == 503
    assert response.json() == {"error": "switchboard is stopping"}


async def test_an_ollama_load_request_refused_is_answered_in_ollamas_shape(
        settings: Settings, upstream: FakeUpstream) -> None:
    refusal = ModelTooLargeError("tiny", 10 << 30, 0)
    service = FakeModelService(upstream=(upstream.host, upstream.port),
                               refusals={"acquire": refusal})
    async with gateway_client(settings, service) as client:
        response = await client.post("/api/generate", json={"model": "tiny"})  # load only
    assert response.status_code == 400
    assert response.json() == {"error": str(refusal), "code": "insufficient_memory"}
    assert response.json()["error"].startswith("model 'tiny' needs 10.0 GiB")
    assert [call.model for call in service.acquired] == ["tiny"]
    assert upstream.requests == []


# -- the runner's own errors, relayed ---------------------------------------------------------

RUNNER_400 = {"error": {"code": 400, "message": "bad grammar", "type": "invalid_request_error"}}


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
async def test_a_runners_error_is_put_in_the_routes_family(
        client: httpx.AsyncClient, service: FakeModelService, upstream: FakeUpstream,
        family: Family) -> None:
    upstream.responder = lambda request: json_reply(RUNNER_400, 400)
    response = await client.post(family.path, json=family.body)
    family.assert_error(response, Expected(400, "bad grammar", "invalid_request_error",
                                           "invalid_request_error"))
    assert len(upstream.requests) == 1
    assert service.in_flight == 0 and service.released == 1


# -- the gateway's own checks -----------------------------------------------------------------


async def test_a_body_that_is_not_json_is_a_400_in_each_family(
        client: httpx.AsyncClient, service: FakeModelService) -> None:
    for family in FAMILIES:
        response = await client.post(family.path, content=b"{not json",
                                     headers={"content-type": "application/json"})
        assert response.status_code == 400
        body = response.json()
        message = body["error"] if family.name == "ollama" else body["error"]["message"]
        assert message.startswith("request body is not valid JSON")
        assert (family.name == "anthropic") == (body.get("type") == "error")
    assert service.acquired == []


async def test_a_missing_model_is_a_400_naming_the_parameter(
        client: httpx.AsyncClient, service: FakeModelService) -> None:
    expected = Expected(400, "'model' is required and must be a non-empty string",
                        "invalid_request_error", "invalid_request_error", "model")
    for family in FAMILIES:
        body = {key: value for key, value in family.body.items() if key != "model"}
        family.assert_error(await client.post(family.path, json=body), expected)
    assert service.acquired == []


@pytest.mark.parametrize(("path", "shape"), [
    ("/v1/nothing", {"error": {"message": "no route for /v1/nothing", "type": "not_found_error",
                               "param": None, "code": None}}),
    ("/api/nothing", {"error": "no route for /api/nothing"}),
])
async def test_an_unknown_route_is_a_404_in_its_family(
        client: httpx.AsyncClient, path: str, shape: dict[str, Any]) -> None:
    response = await client.get(path)
    assert response.status_code == 404
    assert response.json() == shape


# -- auth -------------------------------------------------------------------------------------

KEYS = ("key-one", "key-two")
UNAUTHORIZED = Expected(
    401, "missing or invalid API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'",
    "authentication_error", "authentication_error", None, "invalid_api_key")


@pytest.fixture
async def keyed(tmp_path: Path, service: FakeModelService) -> AsyncIterator[httpx.AsyncClient]:
    async with gateway_client(Settings(home=tmp_path, api_keys=KEYS), service) as started:
        yield started


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer wrong"},
                                     {"x-api-key": "wrong"}, {"authorization": "key-one"},
                                     {"authorization": "Basic key-one"}],
                         ids=["none", "wrong-bearer", "wrong-x-api-key", "no-scheme",
                              "other-scheme"])
async def test_without_a_known_key_a_request_is_a_401_in_its_family(
        keyed: httpx.AsyncClient, service: FakeModelService, upstream: FakeUpstream,
        family: Family, headers: dict[str, str]) -> None:
    response = await keyed.post(family.path, json=family.body, headers=headers)
    family.assert_error(response, UNAUTHORIZED)
    assert response.headers["www-authenticate"] == "Bearer"
    assert service.acquired == [] and upstream.requests == []


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
@pytest.mark.parametrize("headers", [{"authorization": "Bearer key-one"},
                                     {"authorization": "bearer key-two"},
                                     {"x-api-key": "key-two"}],
                         ids=["bearer", "lowercase-bearer-second-key", "x-api-key"])
async def test_a_known_key_as_bearer_or_x_api_key_is_let_through(
        keyed: httpx.AsyncClient, service: FakeModelService, upstream: FakeUpstream,
        family: Family, headers: dict[str, str]) -> None:
    response = await keyed.post(family.path, json={**family.body, "stream": False},
                                headers=headers)
    assert response.status_code == 200, response.text
    assert len(service.acquired) == 1 and len(upstream.requests) == 1


@pytest.mark.parametrize(("method", "path"), [("GET", "/v1/models"), ("GET", "/api/tags"),
                                              ("GET", "/metrics"), ("POST", "/tokenize")])
async def test_routes_beyond_generation_need_a_key_too(
        keyed: httpx.AsyncClient, method: str, path: str) -> None:
    assert (await keyed.request(method, path)).status_code == 401
    allowed = await keyed.request(method, path, headers={"x-api-key": "key-one"})
    assert allowed.status_code != 401


async def test_health_needs_no_key(keyed: httpx.AsyncClient) -> None:
    response = await keyed.get("/health")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


async def test_without_keys_configured_no_key_is_needed(client: httpx.AsyncClient) -> None:
    response = await client.post(OPENAI.path, json=OPENAI.body)
    assert response.status_code == 200, response.text


# -- body limits ------------------------------------------------------------------------------

LIMIT = 512


def _padded(family: Family, size: int) -> bytes:
    """The family's body padded with a string field to exactly ``size`` bytes."""
    bare = orjson.dumps({**family.body, "user": ""})
    body = orjson.dumps({**family.body, "user": "x" * (size - len(bare))})
    assert len(body) == size
    return body


@pytest.fixture
async def limited(tmp_path: Path, service: FakeModelService
                  ) -> AsyncIterator[httpx.AsyncClient]:
    async with gateway_client(Settings(home=tmp_path, max_body_bytes=LIMIT), service) as started:
        yield started


TOO_LARGE = Expected(413, f"request body is larger than {LIMIT} bytes", "invalid_request_error",
                     "request_too_large", None, "body_too_large")


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
async def test_a_body_past_the_limit_is_a_413_in_its_family(
        limited: httpx.AsyncClient, service: FakeModelService, upstream: FakeUpstream,
        family: Family) -> None:
    response = await limited.post(family.path, content=_padded(family, LIMIT + 1),
                                  headers={"content-type": "application/json"})
    family.assert_error(response, TOO_LARGE)
    assert service.acquired == [] and upstream.requests == []


@pytest.mark.parametrize("family", [OPENAI, ANTHROPIC, OLLAMA_CHAT],
                         ids=["openai", "anthropic", "ollama"])
async def test_a_chunked_body_past_the_limit_is_a_413_without_a_content_length(
        limited: httpx.AsyncClient, service: FakeModelService, upstream: FakeUpstream,
        family: Family) -> None:
    body = _padded(family, LIMIT + 100)

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 100):
            yield body[start:start + 100]

    response = await limited.post(family.path, content=pieces(),
                                  headers={"content-type": "application/json"})
    family.assert_error(response, TOO_LARGE)
    assert service.acquired == [] and upstream.requests == []


async def test_a_body_of_exactly_the_limit_is_served(
        limited: httpx.AsyncClient, upstream: FakeUpstream) -> None:
    body = _padded(OPENAI, LIMIT)
    response = await limited.post(OPENAI.path, content=body,
                                  headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    assert upstream.last.body == body
