"""/metrics behind the API keys (issue 18): it names models, loaded runners, their memory and
per-model token counts, so with keys set it needs one, unless the operator opts out for a
scraper on a private network. /health stays open either way."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.server import Served, start_fake_server

KEY = "sk-metrics-0123456789"


def _serve(root: Path, fake_runner: Path, **env: str) -> Served:
    return start_fake_server(root, fake_runner, {"fake": {}},
                             {"SWITCHBOARD_API_KEYS": KEY, **env})


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory, fake_runner: Path) -> Iterator[Served]:
    server = _serve(tmp_path_factory.mktemp("metrics"), fake_runner)
    yield server
    server.stop()


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer sk-wrong"},
                                     {"x-api-key": "sk-wrong"}])
def test_metrics_without_the_key_is_a_401_in_openai_shape(keyed: Served,
                                                          headers: dict[str, str]) -> None:
    response = httpx.get(f"{keyed.url}/metrics", headers=headers, timeout=10)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "invalid_api_key" and error["type"] == "authentication_error"
    assert "switchboard_" not in response.text


def test_metrics_with_the_key_as_a_scraper_sends_it(keyed: Served) -> None:
    response = httpx.get(f"{keyed.url}/metrics", headers={"Authorization": f"Bearer {KEY}"},
                         timeout=10)
    assert response.status_code == 200 and "switchboard_requests_total" in response.text
    assert httpx.get(f"{keyed.url}/health", timeout=10).status_code == 200, "/health is open"


def test_metrics_public_serves_metrics_without_a_key_but_keeps_the_api_closed(
    tmp_path: Path, fake_runner: Path
) -> None:
    served = _serve(tmp_path, fake_runner, SWITCHBOARD_METRICS_PUBLIC="true")
    try:
        response = httpx.get(f"{served.url}/metrics", timeout=10)
        assert response.status_code == 200 and "switchboard_requests_total" in response.text
        assert httpx.get(f"{served.url}/v1/models", timeout=10).status_code == 401
    finally:
        served.stop()
