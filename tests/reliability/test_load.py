"""200 concurrent streaming clients against the real model and a small queue: each gets a
whole stream or an immediate 503 with Retry-After, nothing else, and nothing hangs."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.server import Served, gemma_models, start_server

pytestmark = pytest.mark.usefixtures("real_variants")
CLIENTS = 200


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, gemma_path: Path) -> Iterator[Served]:
    server = start_server(tmp_path_factory.mktemp("load"), gemma_models(gemma_path), {
        "SWITCHBOARD_MAX_QUEUE": "8", "SWITCHBOARD_NUM_PARALLEL": "2",
        "SWITCHBOARD_LOG_LEVEL": "warning"})
    yield server
    server.stop()


async def _one(client: httpx.AsyncClient, url: str) -> str:
    body = {"model": "gemma3:270m", "stream": True, "max_tokens": 8,
            "messages": [{"role": "user", "content": "hi"}]}
    async with client.stream("POST", url, json=body) as response:
        if response.status_code == 503:
            assert response.headers["retry-after"] == "1"
            error = (await response.aread()).decode()
            assert '"queue_full"' in error
            return "503"
        assert response.status_code == 200, response.status_code
        lines = [line async for line in response.aiter_lines() if line]
        assert lines[-1] == "data: [DONE]", lines[-3:]
        assert not any('"error"' in line for line in lines)
        return "200"


def test_200_streaming_clients_get_a_whole_stream_or_a_prompt_503(served: Served) -> None:
    url = f"{served.url}/v1/chat/completions"
    httpx.post(url, timeout=120, json={"model": "gemma3:270m", "max_tokens": 1,
                                       "messages": [{"role": "user", "content": "hi"}]})
    before = _rss(served.proc.pid)

    async def burst() -> list[str | BaseException]:
        limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:
            return await asyncio.gather(*(_one(client, url) for _ in range(CLIENTS)),
                                        return_exceptions=True)

    started = time.monotonic()
    outcomes = asyncio.run(burst())
    elapsed = time.monotonic() - started
    failures = [o for o in outcomes if isinstance(o, BaseException)]
    assert failures == [], failures[:3]
    counts = Counter(outcomes)
    assert counts["200"] >= 3 and counts["503"] >= CLIENTS // 2, counts  # the queue sheds load
    assert counts["200"] + counts["503"] == CLIENTS, counts
    assert elapsed < 90, f"{CLIENTS} clients took {elapsed:.0f} s"
    after = _rss(served.proc.pid)
    assert after < before + (30 << 20), f"gateway RSS {before >> 20} -> {after >> 20} MiB"
    assert httpx.get(f"{served.url}/health").status_code == 200
    print(f"{dict(counts)} in {elapsed:.1f} s; gateway RSS {before >> 20} -> {after >> 20} MiB")
