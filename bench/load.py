"""A load generator in plain asyncio: the relay's own pooled HTTP/1.1 client
(:mod:`gateway.upstream`, httptools) drives the requests, because httpx costs more per request
than the proxies under test and would measure itself."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import orjson

from gateway.upstream import UpstreamPool


@dataclass(frozen=True)
class Target:
    """Where requests go: a URL and the headers (a key) it needs."""

    url: str
    headers: tuple[tuple[bytes, bytes], ...] = ()

    @property
    def address(self) -> tuple[str, int]:
        parts = urlsplit(self.url)
        return parts.hostname or "127.0.0.1", parts.port or 80

    @property
    def path(self) -> bytes:
        return (urlsplit(self.url).path or "/").encode()


def chat_body(model: str, max_tokens: int = 1, stream: bool = False) -> bytes:
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}],
                         "max_tokens": max_tokens, "temperature": 0, "stream": stream})


async def one(pool: UpstreamPool, target: Target, body: bytes,
              limit: int) -> tuple[float, bytes]:
    """Seconds for one request, response read to the end, and its body; raises on a
    non-200."""
    host, port = target.address
    headers = [(b"Content-Type", b"application/json"), *target.headers]
    started = time.perf_counter()
    response = await pool.request(host, port, b"POST", target.path, headers, body, limit=limit)
    try:
        answer = await response.read()
    finally:
        response.release()
    seconds = time.perf_counter() - started
    if response.status != 200:
        raise RuntimeError(f"{target.url} answered {response.status}: {answer[:300]!r}")
    return seconds, answer


async def run(
    target: Target, body: bytes, requests: int, clients: int, pool: UpstreamPool | None = None,
    answers: list[bytes] | None = None,
) -> tuple[list[float], float]:
    """(per-request seconds, wall seconds) for ``requests`` spread over ``clients`` workers;
    on ``pool``'s open connections when given (the caller closes it), else on new ones. The
    bodies go to ``answers``, in the order of the latencies, when given."""
    own = pool is None
    pool = pool or UpstreamPool()
    latencies: list[float] = []
    remaining = requests

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            seconds, answer = await one(pool, target, body, clients)
            latencies.append(seconds)
            if answers is not None:
                answers.append(answer)

    started = time.perf_counter()
    try:
        await asyncio.gather(*(worker() for _ in range(clients)))
    finally:
        if own:
            pool.close()
    return latencies, time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]
