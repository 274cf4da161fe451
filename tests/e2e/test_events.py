"""/api/events and loading feedback, end to end on the fake runner (what is under test is the
gateway's bookkeeping, not the model)."""

from __future__ import annotations

import concurrent.futures
import queue
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.e2e.server import Served, start_fake_server, wait_until

HI = [{"role": "user", "content": "hi"}]
SLOW_LOAD = 20.0  # seconds the slow model takes to become ready


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, fake_runner: Path) -> Iterator[Served]:
    models: dict[str, dict[str, Any]] = {
        "fake": {}, "slow": {"args": ["--fake-delay", str(SLOW_LOAD)]}}
    server = start_fake_server(tmp_path_factory.mktemp("events"), fake_runner, models, {
        "SWITCHBOARD_LOAD_PING": "1s", "SWITCHBOARD_EVENTS_SAMPLE": "0.2s",
        "SWITCHBOARD_EVENTS_PING": "1s"})
    yield server
    server.stop()


class Watcher:
    """Reads /api/events in a thread; ``events`` receives (kind, data) as they arrive."""

    def __init__(self, served: Served, logs: str | None = None) -> None:
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._stop = threading.Event()
        params = {"logs": logs} if logs else {}
        self._thread = threading.Thread(target=self._read, args=(served.url, params), daemon=True)
        self._thread.start()

    def _read(self, url: str, params: dict[str, str]) -> None:
        with httpx.stream("GET", f"{url}/api/events", params=params, timeout=30) as response:
            kind = ""
            for line in response.iter_lines():
                if self._stop.is_set():
                    return
                if line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:"):
                    self.events.put((kind, orjson.loads(line[5:])["data"]))

    def until(self, predicate: Any, timeout: float = 15) -> list[tuple[str, Any]]:
        """Events read until one matches ``predicate`` (which is included)."""
        seen = []
        deadline = time.monotonic() + timeout
        while True:
            kind, data = self.events.get(timeout=max(deadline - time.monotonic(), 0.01))
            seen.append((kind, data))
            if predicate(kind, data):
                return seen

    def close(self) -> None:
        self._stop.set()


def _chat(served: Served, model: str) -> httpx.Response:
    return httpx.post(f"{served.url}/v1/chat/completions", timeout=60,
                      json={"model": model, "messages": HI})


def _subscribers(served: Served) -> float:
    for line in httpx.get(f"{served.url}/metrics", timeout=10).text.splitlines():
        if line.startswith("switchboard_event_subscribers "):
            return float(line.split()[1])
    raise AssertionError("no subscriber gauge")


def test_events_open_with_a_snapshot_then_follow_a_load_and_unload(served: Served) -> None:
    watcher = Watcher(served, logs="fake")
    try:
        kind, snapshot = watcher.events.get(timeout=15)
        assert kind == "snapshot" and snapshot["models"] == ["fake", "slow"]
        assert _chat(served, "fake").status_code == 200
        httpx.post(f"{served.url}/api/unload", json={"model": "fake"}, timeout=30)
        seen = watcher.until(lambda k, d: k == "runner" and d["state"] == "stopped")
        states = [d["state"] for k, d in seen if k == "runner"]
        assert states == ["starting", "ready", "stopping", "stopped"]
        ready = next(d for k, d in seen if k == "runner" and d["state"] == "ready")
        assert ready["runner"] == "fake" and ready["pid"] and ready["variant"] == "system"
        assert ready["load_seconds"] > 0 and ready["estimated_bytes"] > 0
        request = next(d for k, d in seen if k == "request")
        assert (request["model"], request["status"], request["path"]) == (
            "fake", 200, "/v1/chat/completions")
        assert any(k == "log" and "fake llama-server" in d["line"] for k, d in seen)
        memory = watcher.until(lambda k, d: k == "memory")[-1][1]
        assert memory["ram"]["total"] > memory["ram"]["available"] > 0
    finally:
        watcher.close()


def test_a_client_that_leaves_the_event_stream_is_forgotten(served: Served) -> None:
    with httpx.stream("GET", f"{served.url}/api/events", timeout=30) as response:
        # Kept in a name: a discarded iter_lines() generator is finalised at once, and that
        # closes the response, so the server could forget this reader before the check.
        lines = response.iter_lines()
        next(lines)
        assert _subscribers(served) >= 1
    assert wait_until(lambda: _subscribers(served) == 0, 10)


def test_a_request_says_how_long_it_queued_and_loaded(served: Served) -> None:
    httpx.post(f"{served.url}/api/unload", json={"model": "fake"}, timeout=30)
    cold = _chat(served, "fake")
    timing = dict(part.strip().split(";dur=") for part in cold.headers["server-timing"].split(","))
    assert float(timing["load"]) > 0
    warm = _chat(served, "fake")
    assert "load;dur=0.0" in warm.headers["server-timing"]


def test_a_stream_waiting_for_a_slow_load_gets_pings_and_succeeds(served: Served) -> None:
    """Both clients wait for the same 20 s load with 5 s read timeouts: without pings the SDK
    would give up at 5 s; with them it gets its stream."""

    def raw() -> list[str]:
        with httpx.stream("POST", f"{served.url}/v1/chat/completions", timeout=5,
                          json={"model": "slow", "messages": HI, "stream": True}) as response:
            assert response.status_code == 200
            return [line for line in response.iter_lines() if line]

    def sdk() -> str:
        client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="x", max_retries=0,
                               timeout=5)
        with client:
            chunks = client.chat.completions.create(
                model="slow", messages=[{"role": "user", "content": "hi"}], stream=True)
            return "".join(c.choices[0].delta.content or "" for c in chunks)

    def waiting() -> bool:
        metrics = httpx.get(f"{served.url}/metrics", timeout=5).text
        return "switchboard_queue_depth 1.0" in metrics

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        # One slot: the raw stream must be the request the load serves (the other waits for
        # its slot, not for the load), so it goes first, and the SDK's once it is queued.
        lines_future = pool.submit(raw)
        assert wait_until(waiting, 5)
        text_future = pool.submit(sdk)
        lines, text = lines_future.result(), text_future.result()
    assert time.monotonic() - started >= SLOW_LOAD
    assert text == "fake stream reply"
    pings = [line for line in lines if line == ": loading the model"]
    assert len(pings) >= SLOW_LOAD / 2  # one a second, allowing for a busy machine
    timing = next(line for line in lines if line.startswith(": server-timing"))
    load_ms = float(timing.split("load;dur=")[1])
    assert load_ms >= SLOW_LOAD * 1000 * 0.9
    assert lines[-1] == "data: [DONE]"


def test_an_open_event_stream_ends_on_sigterm_without_holding_the_shutdown(
    tmp_path: Path, fake_runner: Path
) -> None:
    server = start_fake_server(tmp_path, fake_runner, {"fake": {}})
    with httpx.stream("GET", f"{server.url}/api/events", timeout=30) as response:
        lines = response.iter_lines()
        next(lines)
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        rest = list(lines)  # ends when the drain closes the bus, not at the 30 s grace
        ended = time.monotonic() - started
    assert server.proc.wait(20) == 0
    assert ended < 10, rest
    assert "Traceback" not in server.log_text()
