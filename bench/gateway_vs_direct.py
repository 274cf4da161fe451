"""Gateway vs straight to llama-server, side by side in one run, on the same runner.

Starts `switchboard serve`, loads the default model, then alternates identical requests between
the gateway and the runner it launched (found through /proc, key read from its environment),
so both paths see the same machine state. Prints medians and ratios.

    .venv/bin/python -m bench.gateway_vs_direct [--rounds 10] [--tokens 64] [--fake]

``--fake`` runs the fault-injection runner instead (canned replies, no model compute), which
isolates what the gateway itself adds from CPU contention with llama-server's threads.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import orjson

from runner.model_source import resolve_source
from runner.settings import DEFAULT_MODEL, Settings
from tests.conftest import FAKE_RUNNER
from tests.e2e.server import Served, gemma_models, start_server
from tests.fakes.gguf import write_empty_gguf

PROMPT = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]


def stream_once(client: httpx.Client, url: str, headers: dict[str, str],
                tokens: int) -> tuple[float, float, int]:
    """(time to first content, total seconds, content chunks) for one streamed completion."""
    body = {"model": DEFAULT_MODEL, "messages": PROMPT, "max_tokens": tokens, "stream": True,
            "temperature": 0, "seed": 1}
    started = time.perf_counter()
    first = 0.0
    chunks = 0
    with client.stream("POST", url, json=body, headers=headers) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            event = orjson.loads(line[6:])
            if event.get("choices") and event["choices"][0]["delta"].get("content"):
                chunks += 1
                if not first:
                    first = time.perf_counter() - started
    return first, time.perf_counter() - started, chunks


def tiny_once(client: httpx.Client, url: str, headers: dict[str, str]) -> float:
    body = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 1, "temperature": 0}
    started = time.perf_counter()
    client.post(url, json=body, headers=headers).raise_for_status()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--fake", action="store_true", help="canned runner, no model compute")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.fake:
            dummy = Path(tmp) / "dummy.gguf"
            write_empty_gguf(dummy)
            env = {"SWITCHBOARD_LLAMA_SERVER": str(FAKE_RUNNER),
                   "SWITCHBOARD_LLM_LIBRARY": "system"}
            served = start_server(Path(tmp), {DEFAULT_MODEL: {"source": str(dummy)}}, env)
        else:
            gguf = resolve_source(Settings().models[DEFAULT_MODEL].source, Settings().home)
            served = start_server(Path(tmp), gemma_models(gguf))
        try:
            run(served, args.rounds, args.tokens)
        finally:
            served.stop()


def run(served: Served, rounds: int, tokens: int) -> None:
    gateway = served.url
    with httpx.Client(timeout=300) as client:
        tiny_once(client, f"{gateway}/v1/chat/completions", {})  # load the runner
        port, key = served.runner_address()
        paths = {
            "gateway": (f"{gateway}/v1/chat/completions", {}),
            "direct": (f"http://127.0.0.1:{port}/v1/chat/completions",
                       {"Authorization": f"Bearer {key}"}),
        }
        tiny: dict[str, list[float]] = {name: [] for name in paths}
        streams: dict[str, list[tuple[float, float, int]]] = {name: [] for name in paths}
        for _ in range(3):  # warm both paths' connections and the runner's cache
            for url, headers in paths.values():
                tiny_once(client, url, headers)
        for _ in range(rounds):
            for name, (url, headers) in paths.items():
                tiny[name].append(tiny_once(client, url, headers))
                streams[name].append(stream_once(client, url, headers, tokens))

    def med(values: list[float]) -> float:
        return statistics.median(values)

    print(f"{rounds} rounds, interleaved; stream max_tokens={tokens}, temperature 0")
    print(f"{'path':8} {'1-token p50 ms':>15} {'TTFT p50 ms':>12} {'tokens/s p50':>13}")
    rates: dict[str, float] = {}
    for name in paths:
        ttft = med([s[0] for s in streams[name]]) * 1000
        rate = med([s[2] / s[1] for s in streams[name]])
        rates[name] = rate
        print(f"{name:8} {med(tiny[name]) * 1000:15.2f} {ttft:12.2f} {rate:13.1f}")
    overhead = (med(tiny["gateway"]) - med(tiny["direct"])) * 1000
    print(f"gateway/direct tokens/s ratio: {rates['gateway'] / rates['direct']:.3f}")
    print(f"gateway added latency, 1-token request p50: {overhead:+.2f} ms")


if __name__ == "__main__":
    main()
