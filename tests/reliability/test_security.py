"""Hostile input against a served gateway: keys, CORS, SSRF through /api/pull, path tricks.
The fast part of the reliability suite: it runs in `make test` too."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from tests.e2e.server import Served, gemma_models, start_server
from tests.fakes.registry import MODEL, FakeRegistry

KEY = "sk-reliability-secret-0123456789"
ORIGIN = "https://app.example.com"
pytestmark = pytest.mark.usefixtures("real_variants")


@pytest.fixture(scope="module")
def registries(gemma_path: Path) -> Iterator[tuple[FakeRegistry, FakeRegistry]]:
    """(the configured registry, another host nobody allowed)."""
    with FakeRegistry() as default, FakeRegistry() as other:
        for registry in (default, other):
            registry.add_model("library/tiny", "latest",
                               [(MODEL, registry.add_blob(gemma_path))])
        yield default, other


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, gemma_path: Path,
           registries: tuple[FakeRegistry, FakeRegistry]) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("security")
    server = start_server(root, gemma_models(gemma_path), {
        "SWITCHBOARD_API_KEYS": KEY,
        "SWITCHBOARD_CORS_ORIGINS": ORIGIN,
        "SWITCHBOARD_REGISTRY": registries[0].host,
        "SWITCHBOARD_LOG_LEVEL": "debug",  # the most a log can say: still no key in it
    })
    yield server
    server.stop()


def _auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize("headers", [
    {},
    _auth("sk-wrong"),
    _auth(KEY[:-1] + ("1" if KEY[-1] != "1" else "2")),  # differs in the last byte only
    _auth(KEY + "x"),
    {"Authorization": f"Basic {KEY}"},
    {"Authorization": KEY},
    {"x-api-key": "sk-wrong"},
    {"x-api-key": KEY[:-1]},
])
def test_requests_without_the_right_key_get_401(served: Served,
                                                headers: dict[str, str]) -> None:
    for method, path in (("GET", "/v1/models"), ("POST", "/v1/chat/completions"),
                         ("GET", "/api/ps"), ("POST", "/api/pull"), ("POST", "/api/chat"),
                         ("POST", "/v1/messages"), ("POST", "/v1/responses"),
                         ("POST", "/v1/rerank"), ("POST", "/tokenize")):
        response = httpx.request(method, served.url + path, headers=headers, json={}, timeout=10)
        assert response.status_code == 401, (method, path)
        body = response.json()
        if body.get("type") == "error":  # Anthropic's shape, on /v1/messages
            assert body["error"]["type"] == "authentication_error"
        else:
            assert _code(response) == "invalid_api_key"


def test_the_key_may_come_as_x_api_key(served: Served) -> None:
    assert httpx.get(f"{served.url}/v1/models", headers={"x-api-key": KEY},
                     timeout=10).status_code == 200
    # A wrong Bearer beside a right x-api-key: one right credential is enough.
    both = {"x-api-key": KEY, "Authorization": "Bearer sk-wrong"}
    assert httpx.get(f"{served.url}/api/ps", headers=both, timeout=10).status_code == 200


def _code(response: httpx.Response) -> str:
    """The error code in the route family's shape: OpenAI's nested one, Ollama's flat one."""
    error = response.json()
    return str(error["code"] if isinstance(error["error"], str) else error["error"]["code"])


def test_keys_never_reach_the_log(served: Served) -> None:
    httpx.post(f"{served.url}/v1/chat/completions", headers=_auth(), timeout=120,
               json={"model": "gemma3:270m", "max_tokens": 1,
                     "messages": [{"role": "user", "content": "hi"}]}).raise_for_status()
    httpx.get(f"{served.url}/v1/models", headers=_auth("sk-guess-" + KEY[-8:]), timeout=10)
    _port, runner_key = served.runner_address()
    log = served.log_text()
    assert "listening on" in log and "runner start" in log  # the log is not empty
    for secret in (KEY, KEY[-8:], runner_key):
        assert secret not in log


def test_cors_allows_the_configured_origin_only(served: Served) -> None:
    allowed = httpx.get(f"{served.url}/v1/models", headers={**_auth(), "Origin": ORIGIN})
    assert allowed.headers.get("access-control-allow-origin") == ORIGIN
    denied = httpx.get(f"{served.url}/v1/models",
                       headers={**_auth(), "Origin": "https://evil.example.net"})
    assert "access-control-allow-origin" not in denied.headers
    preflight = httpx.options(f"{served.url}/v1/chat/completions", headers={
        "Origin": "https://evil.example.net", "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 400


@pytest.mark.parametrize("body", [
    {"model": "169.254.169.254/latest/meta-data:x"},
    {"model": "localhost:22/ns/m"},
    {"url": "http://169.254.169.254/latest/meta-data/x.gguf", "sha256": "0" * 64},
    {"url": "http://127.0.0.1:1/admin.gguf", "sha256": "0" * 64},
])
def test_api_pull_will_not_fetch_from_hosts_nobody_allowed(served: Served,
                                                           body: dict[str, str]) -> None:
    response = httpx.post(f"{served.url}/api/pull", headers=_auth(), json=body, timeout=30)
    assert response.status_code == 403
    assert _code(response) == "host_not_allowed"


def test_api_pull_from_another_registry_sends_it_nothing(
    served: Served, registries: tuple[FakeRegistry, FakeRegistry]
) -> None:
    _, other = registries
    response = httpx.post(f"{served.url}/api/pull", headers=_auth(), timeout=30,
                          json={"model": f"{other.host}/library/tiny", "insecure": True})
    assert response.status_code == 403 and other.requests == []


@pytest.mark.parametrize("name", [
    "../../../../etc/passwd", "/etc/passwd", "gemma3:270m\x00../x", "..%2F..%2Fetc%2Fpasswd",
    quote("../../etc/passwd", safe=""), "library/../../x:latest", "a" * 5000,
])
def test_hostile_model_names_are_refused_cleanly(served: Served, name: str) -> None:
    chat = httpx.post(f"{served.url}/v1/chat/completions", headers=_auth(), timeout=30,
                      json={"model": name, "messages": [{"role": "user", "content": "hi"}]})
    assert chat.status_code in (400, 404)
    assert set(chat.json()["error"]) == {"message", "type", "param", "code"}
    one = httpx.get(f"{served.url}/v1/models/{quote(name, safe='')}", headers=_auth())
    assert one.status_code in (400, 404)
    pulled = httpx.post(f"{served.url}/api/pull", headers=_auth(), timeout=30,
                        json={"model": name, "stream": False})
    assert pulled.status_code in (400, 403)
    assert httpx.get(f"{served.url}/health").status_code == 200
