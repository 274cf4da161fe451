"""Property-based fuzzing over the gateway's OpenAPI document: no 5xx, every error in its API
family's shape (OpenAI's; Anthropic's on /v1/messages; Ollama's on /api).

Runs on the fake runner (canned replies): what is under test is the gateway's handling of
whatever a client may send, not the model.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import Dialect, dialect_of
from gateway.openapi import DELETE_BODIES, REQUEST_BODIES, document
from tests.e2e.server import Served, start_fake_server

FUZZ = settings(max_examples=100, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=3),
    max_leaves=8,
)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, fake_runner: Path) -> Iterator[Served]:
    server = start_fake_server(tmp_path_factory.mktemp("fuzz"), fake_runner, {
        "fake": {"aliases": ["f", "org/fake:latest"]}, "ranker": {"reranking": True}},
        {"SWITCHBOARD_LOG_LEVEL": "warning"})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(served: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.url, timeout=30) as http:
        yield http


def from_schema(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values for the JSON-schema subset gateway/openapi.py uses (hypothesis-jsonschema 0.23
    no longer runs on current hypothesis)."""
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kinds = schema.get("type", ["string", "number", "object", "array", "boolean", "null"])
    options: list[st.SearchStrategy[Any]] = []
    for kind in [kinds] if isinstance(kinds, str) else kinds:
        if kind == "string":
            options.append(st.text(max_size=12) | st.sampled_from(["5m", "-1", "0", "1h"]))
        elif kind == "integer":
            options.append(st.integers(schema.get("minimum"), schema.get("maximum")))
        elif kind == "number":
            options.append(st.floats(schema.get("minimum"), schema.get("maximum"),
                                     allow_nan=False, allow_infinity=False))
        elif kind == "boolean":
            options.append(st.booleans())
        elif kind == "null":
            options.append(st.none())
        elif kind == "array":
            items = from_schema(schema["items"]) if "items" in schema else JSON
            options.append(st.lists(items, min_size=schema.get("minItems", 0), max_size=3))
        elif kind == "object":
            properties = schema.get("properties", {})
            required = set(schema.get("required", ()))
            options.append(st.fixed_dictionaries(
                {k: from_schema(v) for k, v in properties.items() if k in required},
                optional={k: from_schema(v) for k, v in properties.items()
                          if k not in required},
            ) if properties else st.dictionaries(st.text(max_size=6), JSON, max_size=3))
    return st.one_of(options)


def _steer(body: dict[str, Any], model: str | None) -> dict[str, Any]:
    if model is None:
        body.pop("model", None)
    else:
        body["model"] = model
    return body


def bodies(schema: dict[str, Any], path: str = "") -> st.SearchStrategy[bytes]:
    served = ["ranker"] if "rerank" in path else ["fake", "f"]
    models = st.sampled_from([*served, "no-such-model", None])
    # The stdlib serialises what orjson would refuse (integers past 64 bits): the gateway must
    # answer those with a 400 too.
    valid = st.builds(_steer, from_schema(schema), models).map(lambda b: json.dumps(b).encode())
    return st.one_of(valid, JSON.map(lambda v: json.dumps(v).encode()), st.binary(max_size=64))


def assert_well_shaped(response: httpx.Response, path: str) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:500])
    if response.status_code < 400:
        return
    body = response.json()
    dialect = dialect_of(path)
    if dialect is Dialect.OLLAMA:
        assert isinstance(body["error"], str)
        return
    if dialect is Dialect.ANTHROPIC:
        assert body["type"] == "error"
        assert isinstance(body["error"]["type"], str)
        assert isinstance(body["error"]["message"], str)
        return
    error = body["error"]
    assert isinstance(error["message"], str) and isinstance(error["type"], str)
    assert error["param"] is None or isinstance(error["param"], str)
    assert error["code"] is None or isinstance(error["code"], str)


def test_openapi_document_is_served(client: httpx.Client) -> None:
    served = client.get("/openapi.json").json()
    assert served == orjson.loads(orjson.dumps(document()))
    assert set(REQUEST_BODIES) | set(DELETE_BODIES) <= set(served["paths"])


def test_every_route_is_in_the_document(served: Served, client: httpx.Client) -> None:
    from starlette.routing import Route

    from gateway.app import create_app
    from runner.settings import Settings

    documented = {path: set(ops) for path, ops in client.get("/openapi.json").json()["paths"]
                  .items()}
    for route in create_app(Settings()).routes:
        if not isinstance(route, Route):  # the console's static files
            continue
        path = route.path.replace("{model:path}", "{model}").replace("{path:path}", "{path}")
        methods = {m.lower() for m in route.methods or ()} - {"head"}
        assert methods <= documented.get(path, set()), (path, methods)


@pytest.mark.parametrize(("method", "path"), [*(("POST", p) for p in sorted(REQUEST_BODIES)),
                                              *(("DELETE", p) for p in sorted(DELETE_BODIES))])
def test_fuzzed_bodies_never_get_a_5xx(client: httpx.Client, method: str, path: str) -> None:
    schema = {**REQUEST_BODIES, **DELETE_BODIES}[path]

    @FUZZ
    @given(body=bodies(schema, path))
    def check(body: bytes) -> None:
        response = client.request(method, path, content=body,
                                  headers={"content-type": "application/json"})
        assert_well_shaped(response, path)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

    statuses: dict[int, int] = {}
    check()
    print(path, dict(sorted(statuses.items())))
    # The schema-shaped bodies must get past validation to a runner, not only bounce; the fake
    # store is empty, so a delete or a copy can only be refused.
    if method != "DELETE" and path != "/api/copy":
        assert statuses.get(200, 0) > 0


def test_fuzzed_model_ids_never_get_a_5xx(client: httpx.Client) -> None:
    @FUZZ
    @given(name=st.text(min_size=1, max_size=40))
    def check(name: str) -> None:
        response = client.get(f"/v1/models/{urllib.parse.quote(name, safe='')}")
        assert_well_shaped(response, "/v1/models/")
        assert response.status_code in (200, 404)

    check()


@pytest.mark.parametrize("path", ["org/fake:latest", "org%2Ffake%3Alatest", "f"])
def test_model_ids_with_slashes_and_colons_resolve(client: httpx.Client, path: str) -> None:
    response = client.get(f"/v1/models/{path}")
    assert response.status_code == 200
    assert response.json()["id"] == urllib.parse.unquote(path)
