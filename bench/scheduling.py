"""Load, swap and collation figures on the real runner and model.

    .venv/bin/python -m bench.scheduling [--rounds 5]

Two model names over the default GGUF (ctx 2048 and 4096) with one runner slot: a swap is
"unload A + load B", measured as B's 1-token request time minus a warm 1-token request.
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from runner.model_source import resolve_source
from runner.settings import DEFAULT_MODEL, Settings
from tests.e2e.server import gemma_models, start_server


def timed(client: httpx.Client, url: str, model: str) -> float:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    started = time.perf_counter()
    client.post(url, json=body).raise_for_status()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    gguf = resolve_source(Settings().models[DEFAULT_MODEL].source, Settings().home)
    models = gemma_models(gguf)
    models["b"] = {**models[DEFAULT_MODEL], "ctx_size": 4096, "aliases": []}
    with tempfile.TemporaryDirectory() as tmp:
        served = start_server(Path(tmp), models, {"SWITCHBOARD_MAX_LOADED_MODELS": "1"})
        url = f"{served.url}/v1/chat/completions"
        try:
            with httpx.Client(timeout=300) as client:
                cold = timed(client, url, DEFAULT_MODEL)
                warm = statistics.median(timed(client, url, DEFAULT_MODEL) for _ in range(5))
                swaps = []
                for i in range(args.rounds):
                    swaps.append(timed(client, url, "b" if i % 2 == 0 else DEFAULT_MODEL) - warm)
            names = [DEFAULT_MODEL, "b"] * 20
            before = len(re.findall(r"runner start:", served.log_text()))
            started = time.perf_counter()
            with ThreadPoolExecutor(40) as pool, httpx.Client(timeout=300) as client:
                list(pool.map(lambda m: timed(client, url, m), names))
            wall = time.perf_counter() - started
            loads = len(re.findall(r"runner start:", served.log_text())) - before
        finally:
            served.stop()
    print(f"cold load + 1 token: {cold * 1000:.0f} ms; warm 1-token request: {warm * 1000:.1f} ms")
    print(f"swap (unload A + load B), median of {args.rounds}: "
          f"{statistics.median(swaps) * 1000:.0f} ms (min {min(swaps) * 1000:.0f})")
    print(f"collation: 40 concurrent alternating requests, 1 slot: {loads} loads, "
          f"{wall:.1f} s wall")


if __name__ == "__main__":
    main()
