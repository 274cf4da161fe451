"""DELETE /api/delete of a model with a stream in flight, through a real `switchboard serve` on
the fake runner (issue 18: the delete was refused with a 409, yet the model was drained and
unloaded once the stream ended)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.e2e.server import Served, alive, start_fake_server
from tests.fakes.gguf import write_empty_gguf
from tests.fakes.registry import MODEL, FakeRegistry

CHUNK_DELAY = 0.4  # seconds between the fake runner's 3 chunks: time to delete mid-stream
CHAT = {"model": "slow", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def served(tmp_path: Path, fake_runner: Path) -> Iterator[Served]:
    """A server whose model 'slow' is the store's 'tiny', pulled from a registry on 127.0.0.1,
    run by the fake runner with slow streams."""
    with FakeRegistry() as registry:
        blob = registry.add_blob(write_empty_gguf(tmp_path / "tiny.gguf"))
        registry.add_model("library/tiny", "latest", [(MODEL, blob)])
        server = start_fake_server(tmp_path, fake_runner, {"slow": {
            "source": "tiny", "args": ["--fake-chunk-delay", str(CHUNK_DELAY)]}},
            {"SWITCHBOARD_REGISTRY": registry.host})
        try:
            pulled = httpx.post(f"{server.url}/api/pull", timeout=30,
                                json={"model": "tiny", "insecure": True, "stream": False})
            assert pulled.status_code == 200, pulled.text
            yield server
        finally:
            server.stop()


def _runners(served: Served) -> list[dict[str, object]]:
    models: list[dict[str, object]] = httpx.get(f"{served.url}/api/ps", timeout=10).json()[
        "models"]
    return models


def _loads(served: Served) -> int:
    return served.log_text().count("runner start: model=slow")


def test_a_delete_refused_during_a_stream_changes_nothing(served: Served) -> None:
    contents: list[str] = []
    with httpx.Client(timeout=30) as client:
        with client.stream("POST", f"{served.url}/v1/chat/completions",
                           json={**CHAT, "stream": True}) as stream:
            lines = stream.iter_lines()
            for line in lines:
                if line.startswith("data: {"):
                    contents.append(orjson.loads(line[6:])["choices"][0]["delta"]["content"])
                    break
            (before,) = _runners(served)
            started = time.monotonic()
            refused = client.request("DELETE", f"{served.url}/api/delete", json={"model": "slow"})
            took = time.monotonic() - started
            print(f"delete mid-stream: {refused.status_code} in {took * 1000:.0f} ms")
            assert refused.status_code == 409
            body = refused.json()
            assert isinstance(body["error"], str) and "in use" in body["error"]  # Ollama's shape
            (during,) = _runners(served)
            assert during["pid"] == before["pid"] and during["draining"] is False
            rest = list(lines)
        contents += [orjson.loads(line[6:])["choices"][0]["delta"]["content"]
                     for line in rest if line.startswith("data: {")]
        assert "".join(contents) == "fake stream reply"
        assert [line for line in rest if line][-1] == "data: [DONE]"
        (after,) = _runners(served)
        assert after["pid"] == before["pid"] and after["draining"] is False
        again = client.post(f"{served.url}/v1/chat/completions", json=CHAT)
        assert again.status_code == 200
        assert _loads(served) == 1, "the next request waited for a new load"
        assert [r["pid"] for r in _runners(served)] == [before["pid"]]
        assert "tiny:latest" in [m["name"] for m in client.get(f"{served.url}/api/tags").json()[
            "models"]]
        # Once idle the same delete goes through: unloaded first, then removed.
        assert client.request("DELETE", f"{served.url}/api/delete",
                              json={"model": "slow"}).status_code == 200
        assert _runners(served) == []
        assert not alive(int(str(before["pid"])))
        assert "tiny:latest" not in [m["name"] for m in client.get(f"{served.url}/api/tags").json()[
            "models"]]
