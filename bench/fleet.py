"""The fleet, side by side in one run: real ``switchboard serve --cluster`` nodes over a real
NATS, each runner the stub (:mod:`bench.stub_runner`), so what is measured is the fleet's own
cost and routing rather than a model's compute.

1. **Hop.** A model only node b has, asked of node a (a hop to b) and of b directly, in
   interleaved blocks: the p50 a hop adds (target: at most 1 ms).
2. **Death.** Node a (no model) routes to b and c, which both run a copy; b is killed under
   load. Measured: the time until a sends b nothing more (its last failed hop), the time until
   b is out of a's view, and how many clients saw an error (target: none; a hop that cannot
   connect is retried on c).
3. **Spread.** A model with ``replicas: 2`` over two nodes; 16 clients, all at node a: the
   second copy starts on b, and neither copy serves more than 60% of the requests.

    .venv/bin/python -m bench.fleet [--quick]

Writes ``docs/fleet.md`` (and prints it).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime as dt
import re
import signal
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import orjson
import uvloop

from bench.load import Target, chat_body, one, percentile
from bench.peers import (
    STUB_ENV,
    Peer,
    added_latency,
    machine_facts,
    ms,
    start_floor,
    stub_wrapper,
    table,
)
from gateway.upstream import UpstreamPool
from tests.cluster.conftest import NatsServer
from tests.e2e.server import Served, free_port, start_server, wait_until
from tests.fakes.gguf import write_empty_gguf

KEY = "bench-fleet-key"
TTL = "4"  # seconds: what a dead node's record may outlive it by, plus one refresh
DOCS = Path(__file__).resolve().parents[1] / "docs" / "fleet.md"


class Fleet:
    """NATS and the nodes started on it; stops them all."""

    def __init__(self, work: Path) -> None:
        self.work = work
        work.mkdir(parents=True)
        self.nats = NatsServer(free_port(), work / "nats")
        self.nats.start()
        self.nodes: dict[str, Served] = {}
        self.wrapper = work.parent / "bin" / "stub-llama-server"
        self.gguf = work / "stub.gguf"
        write_empty_gguf(self.gguf)

    def start(self, name: str, models: dict[str, dict[str, Any]]) -> Served:
        served = start_server(self.work / name, {m: {"source": str(self.gguf), **c}
                                                 for m, c in models.items()}, {
            **STUB_ENV, "SWITCHBOARD_LLAMA_SERVER": str(self.wrapper),
            "SWITCHBOARD_CLUSTER": self.nats.url, "SWITCHBOARD_NODE_NAME": name,
            "SWITCHBOARD_NODE_TTL": TTL, "SWITCHBOARD_CLUSTER_KEY": KEY,
            "SWITCHBOARD_LOG_LEVEL": "warning"})
        self.nodes[name] = served
        return served

    def joined(self, *names: str) -> None:
        def all_listed() -> bool:
            for name in names:
                listed = httpx.get(f"{self.nodes[name].url}/api/nodes", timeout=5).json()
                if sorted(n["name"] for n in listed["nodes"]) != sorted(names):
                    return False
            return True

        if not wait_until(all_listed, 30):
            raise RuntimeError(f"nodes {names} did not see each other within 30 s")

    def close(self) -> None:
        for served in self.nodes.values():
            served.stop()
        self.nats.stop()


def _ask(url: str, model: str, max_tokens: int = 1) -> None:
    httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
        "model": model, "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": max_tokens}).raise_for_status()


def _copies(served: Served, model: str) -> list[str]:
    models = httpx.get(f"{served.url}/api/ps", timeout=5).json()["models"]
    return sorted(m["node"] for m in models if m["name"] == model)


# -- 1. the hop ---------------------------------------------------------------------------------


HOP, FLOOR, DIRECT = "a → b (one hop)", "bare Hypercorn relay → b", "b directly"


def hop(work: Path, requests: int) -> dict[str, Any]:
    fleet = Fleet(work / "hop")
    floors: list[Peer] = []
    try:
        a = fleet.start("a", {"here": {}})
        b = fleet.start("b", {"m": {}})
        fleet.joined("a", "b")
        _ask(b.url, "m")  # loaded on b, and in a's view
        if not wait_until(lambda: _copies(a, "m") == ["b"], 10):
            raise RuntimeError("a never saw b's copy")
        direct = Peer(DIRECT, b.url, "m", b.proc.pid, lambda: None)
        # The floor of any hop on this stack: a bare Hypercorn app relaying to b through the
        # same pooled client, no middleware, routing or validation (bench.floor).
        floor = replace(start_floor("relay", work / "hop", direct), name=FLOOR, model="m")
        floors.append(floor)
        peers = [Peer(HOP, a.url, "m", a.proc.pid, lambda: None), floor, direct]
        samples = uvloop.run(added_latency(peers, requests, 1, chat_body("m")))
    finally:
        for started in floors:
            started.stop()
        fleet.close()
    p50 = {name: percentile(lat, 50) for name, lat in samples.items()}
    return {"p50": p50, "p99": {n: percentile(lat, 99) for n, lat in samples.items()},
            "added_p50": p50[HOP] - p50[DIRECT], "floor_p50": p50[FLOOR] - p50[DIRECT],
            "requests": min(len(lat) for lat in samples.values())}


# -- 2. a node's death ----------------------------------------------------------------------------

_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*node b did not answer")


def death(work: Path, seconds_after: float) -> dict[str, Any]:
    fleet = Fleet(work / "death")
    errors: list[str] = []
    answered = [0]
    stop = threading.Event()

    def client(url: str) -> None:
        with httpx.Client(timeout=30) as session:
            while not stop.is_set():
                answer = session.post(f"{url}/v1/chat/completions", json={
                    "model": "m", "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 1})
                if answer.status_code == 200:
                    answered[0] += 1
                else:
                    errors.append(f"{answer.status_code} {answer.text[:120]}")

    try:
        a = fleet.start("a", {"here": {}})
        b = fleet.start("b", {"m": {"parallel": 4}})
        c = fleet.start("c", {"m": {"parallel": 4}})
        fleet.joined("a", "b", "c")
        _ask(b.url, "m")
        _ask(c.url, "m")
        if not wait_until(lambda: _copies(a, "m") == ["b", "c"], 10):
            raise RuntimeError("a never saw both copies")
        clients = [threading.Thread(target=client, args=(a.url,)) for _ in range(4)]
        for thread in clients:
            thread.start()
        time.sleep(1.0)
        before = answered[0]
        killed = time.time()
        b.stop(signal.SIGKILL)

        def b_gone() -> bool:
            listed = httpx.get(f"{a.url}/api/nodes", timeout=5).json()["nodes"]
            return all(n["name"] != "b" for n in listed)

        wait_until(b_gone, 60, step=0.05)
        out_of_view = time.time() - killed
        time.sleep(seconds_after)
        stop.set()
        for thread in clients:
            thread.join(60)
        hops = [dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                for line in a.log_text().splitlines() if (m := _LOG_TIME.match(line))]
    finally:
        stop.set()
        fleet.close()
    return {"out_of_view": out_of_view, "failed_hops": len(hops),
            "last_hop": max(hops) - killed if hops else 0.0, "errors": errors,
            "answered": answered[0], "before_kill": before, "ttl": float(TTL)}


# -- 3. the spread over two copies ----------------------------------------------------------------


async def _spread_load(url: str, clients: int, requests: int, tokens: int) -> list[float]:
    target = Target(f"{url}/v1/chat/completions")
    body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                         "max_tokens": tokens, "stream": True, "stub_interval": 0.004})
    pool = UpstreamPool()
    latencies: list[float] = []
    left = [requests]

    async def worker() -> None:
        while left[0] > 0:
            left[0] -= 1
            seconds, _ = await one(pool, target, body, 1 << 20)
            latencies.append(seconds)

    try:
        await asyncio.gather(*(worker() for _ in range(clients)))
    finally:
        pool.close()
    return latencies


def _hops_served(served: Served) -> int:
    """Requests this node served for another (its ``/_node/`` route), from its metrics."""
    text = httpx.get(f"{served.url}/metrics", timeout=5).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("switchboard_requests_total{") and "_node" in line:
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def spread(work: Path, requests: int) -> dict[str, Any]:
    fleet = Fleet(work / "spread")
    try:
        model = {"m": {"replicas": 2, "parallel": 4}}
        a = fleet.start("a", model)
        b = fleet.start("b", model)
        fleet.joined("a", "b")
        latencies = uvloop.run(_spread_load(a.url, 16, requests, 16))
        wait_until(lambda: _copies(a, "m") == ["a", "b"], 5)  # b's record: a beat behind
        copies = _copies(a, "m")
        at_b = _hops_served(b)
    finally:
        fleet.close()
    return {"requests": len(latencies), "copies": copies, "served": {
        "a": len(latencies) - at_b, "b": at_b}, "p50": percentile(latencies, 50)}


# -- the report ------------------------------------------------------------------------------------


def report(results: dict[str, Any]) -> tuple[str, list[str]]:
    h, d, s = results["hop"], results["death"], results["spread"]
    missed = []
    if h["added_p50"] > 0.001:
        missed.append("hop adds more than 1 ms at p50")
    if d["errors"]:
        kinds = collections.Counter(d["errors"]).most_common(3)  # so a miss says what failed
        missed.append(f"{len(d['errors'])} client errors when a node died: "
                      + "; ".join(f"{count}x {text}" for text, count in kinds))
    shares = {n: c / max(s["requests"], 1) for n, c in s["served"].items()}
    if s["copies"] != ["a", "b"] or max(shares.values()) > 0.6:
        missed.append(f"spread over two copies: {s['copies']}, shares {shares}")
    lines = [
        "# The fleet, measured side by side",
        "",
        "Written by `python -m bench.fleet` (part of `make bench`): real `switchboard serve "
        "--cluster` nodes over a real NATS (Debian's `nats-server`), the stub runner behind "
        "each, so the figures are the fleet's own costs.",
        "",
        " · ".join(f"{k}: {v}" for k, v in results["machine"].items()),
        "",
        "## One hop",
        "",
        table(["path", "p50", "p99"],
              [[name, ms(h["p50"][name]), ms(h["p99"][name])] for name in h["p50"]]),
        "",
        f"A hop adds **{h['added_p50'] * 1e3:.3f} ms** at p50 over asking the serving node "
        f"directly ({h['requests']} requests each, one client, interleaved blocks; target "
        f"≤ 1 ms). A bare Hypercorn app relaying to b, the floor of any hop on this stack, "
        f"adds {h['floor_p50'] * 1e3:.3f} ms: the fleet's own layers on a (routing, "
        f"validation, middleware) cost {(h['added_p50'] - h['floor_p50']) * 1e3:.3f} ms over it.",
        "",
        "## A node's death",
        "",
        f"Node a routes to copies on b and c; b is killed with SIGKILL under 4 clients "
        f"(node TTL {d['ttl']:.0f} s).",
        "",
        table(["measured", "figure"], [
            ["requests answered before the kill (1 s)", str(d["before_kill"])],
            ["hops to the dead node (each retried on c)", str(d["failed_hops"])],
            ["kill → the last request sent to b", f"{d['last_hop'] * 1e3:.0f} ms"],
            ["kill → b out of a's view", f"{d['out_of_view']:.2f} s"],
            ["client errors", str(len(d["errors"]))],
            ["requests answered in all", str(d["answered"])],
        ]),
        "",
        "The first hops that cannot connect (those in flight at the kill) take b out of a's "
        "routing until it publishes a newer record; the record itself leaves when JetStream "
        "expires it.",
        "",
        "## 16 clients, two nodes, `replicas: 2`",
        "",
        table(["node", "requests served", "share"],
              [[n, str(c), f"{shares[n]:.0%}"] for n, c in s["served"].items()]),
        "",
        f"All 16 clients at node a, 4 slots a copy, 16 streamed tokens each: copies on "
        f"{', '.join(s['copies'])}; p50 {ms(s['p50'])} ms. Target: both serve, neither more "
        "than 60%.",
        "",
        "Targets missed: " + ("; ".join(missed) if missed else "none"),
        "",
    ]
    return "\n".join(lines), missed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer requests, for a test")
    parser.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        work = Path(tmp)
        (work / "bin").mkdir()
        stub_wrapper(work)
        results = {
            "machine": machine_facts(),
            "hop": hop(work, 200 if args.quick else 3000),
            "death": death(work, 1.0),
            "spread": spread(work, 160 if args.quick else 1600),
        }
    # Like bench.peers: a miss is reported on the page, not a failed `make bench`.
    text, _ = report(results)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
