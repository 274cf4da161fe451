"""The benchmark harness's parts work (the whole `make bench` run takes minutes: not here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import uvloop

from bench.load import Target, chat_body, percentile, run
from bench.peers import (
    Peer,
    Results,
    llama_version,
    outside_compute,
    profile_shares,
    start_floor,
    write_chart,
    write_markdown,
)
from gateway.upstream import UpstreamPool
from tests.e2e.server import free_port

STUB = Path(__file__).parent.parent / "bench" / "stub_runner.py"


def test_the_stub_runner_answers_the_load_generator_and_checks_its_key() -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(STUB), "--port", str(port)],
                            env={"LLAMA_API_KEY": "k"}, stderr=subprocess.PIPE)
    try:
        assert proc.stderr is not None and b"listening" in proc.stderr.readline()
        good = Target(f"http://127.0.0.1:{port}/v1/chat/completions",
                      ((b"Authorization", b"Bearer k"),))
        latencies, wall = uvloop.run(run(good, chat_body("m"), 200, 8))
        assert len(latencies) == 200 and wall > 0
        assert 0 < percentile(latencies, 50) <= percentile(latencies, 99)
        bad = Target(f"http://127.0.0.1:{port}/v1/chat/completions")
        try:
            uvloop.run(run(bad, chat_body("m"), 1, 1))
        except RuntimeError as exc:
            assert "401" in str(exc)
        else:
            raise AssertionError("the stub accepted a request without its key")
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()


def test_results_render_as_markdown_and_a_chart(tmp_path: Path) -> None:
    raw = tmp_path / "profile.txt"
    raw.write_text("main (x.py:1);Runner.run (asyncio/runners.py:118) 50\n"
                   "main (x.py:1);h11_fn (h11/_connection.py:1) 30\n"
                   "main (x.py:1);relay (gateway/relay.py:9) 10\n")
    results = Results(machine={"date": "today", "cpu": "cpu", "cores": "2", "memory": "1 GiB",
                               "os": "linux", "python": "3.11", "switchboard": "0"})
    results.target(False, "added latency p50 0.7 ms (target 0.5 ms)")
    results.target(True, "gateway RSS 70 MiB under load (target 100)")
    results.samples["profile"] = profile_shares(raw)
    results.samples["stub_latency_c1"] = {"direct": [0.001, 0.002], "switchboard": [0.002]}
    results.samples["stub_throughput"] = {"direct": {1: 10.0, 16: 20.0, 64: 30.0},
                                          "switchboard": {1: 5.0, 16: 10.0, 64: 15.0}}
    write_markdown(results, tmp_path / "b.md")
    text = (tmp_path / "b.md").read_text()
    assert text.index("## Targets missed") < text.index("added latency p50 0.7 ms") < \
        text.index("## Targets met")
    assert "| h11 | 75% |" in text and "| gateway | 25% |" in text  # idle samples left out
    write_chart(results, tmp_path / "b.png")
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"


def test_the_model_latency_less_its_reported_compute_subtracts_prompt_and_generation() -> None:
    answers = [b'{"timings":{"prompt_ms":20.0,"predicted_ms":5.0}}', b'{"choices":[]}']
    outside = outside_compute([0.030, 0.010], answers)
    assert abs(outside[0] - 0.005) < 1e-9  # 30 ms less 25 ms of reported compute
    assert outside[1] == 0.010  # no timings: nothing to take off


def test_the_llama_server_version_is_its_version_line(tmp_path: Path) -> None:
    fake = tmp_path / "llama-server"
    fake.write_text("#!/bin/sh\necho 'version: 0.5.0-dev (build 1, commit 0c1e570)' >&2\n"
                    "echo 'built with GNU 12.2.0 for Linux x86_64' >&2\n")
    fake.chmod(0o755)
    assert llama_version(fake) == "llama-server 0.5.0-dev (build 1, commit 0c1e570)"


def test_the_floor_servers_answer_alone_and_through_one_hop(tmp_path: Path) -> None:
    stub_port = free_port()
    stub = subprocess.Popen([sys.executable, str(STUB), "--port", str(stub_port)],
                            stderr=subprocess.PIPE)
    floors: list[Peer] = []
    try:
        assert stub.stderr is not None and b"listening" in stub.stderr.readline()
        upstream = Peer("direct", f"http://127.0.0.1:{stub_port}", "m", stub.pid, lambda: None)
        floors = [start_floor("fixed", tmp_path, upstream),
                  start_floor("relay", tmp_path, upstream)]

        async def both() -> list[list[bytes]]:
            found = []
            for floor in floors:
                pool = UpstreamPool()
                answers: list[bytes] = []
                try:
                    for _ in range(2):  # two runs on one caller's pool, as added_latency does
                        await run(floor.target(), chat_body("m"), 20, 2, pool, answers)
                finally:
                    pool.close()
                found.append(answers)
            return found

        fixed, relayed = uvloop.run(both())
        assert len(fixed) == len(relayed) == 40
        assert b'"id":"floor"' in fixed[0]
        assert b'"id":"floor"' not in relayed[0] and b"chat.completion" in relayed[0]
    finally:
        for floor in floors:
            floor.stop()
        stub.terminate()
        stub.wait(10)
        if stub.stderr is not None:
            stub.stderr.close()


def _leftovers() -> list[str]:
    """Command lines of processes a benchmark run started (its peers run out of its
    switchboard-bench-* work directory, or are bench/floor.py)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "switchboard-bench-" in text or "bench/floor.py" in text:
            found.append(text)
    return found


@pytest.mark.timeout(900)
def test_make_bench_quick_measures_every_figure_on_the_real_payload_and_stops_its_peers(
        tmp_path: Path, real_variants: dict[str, Path], gemma_path: Path) -> None:
    # The whole harness with fewer samples (about 80 s here): direct, router mode and
    # switchboard on the packaged llama-server and the default model.
    subprocess.run([sys.executable, "-m", "bench.peers", "--quick", "--out", str(tmp_path)],
                   check=True, timeout=900, cwd=Path(__file__).parent.parent,
                   stdout=subprocess.DEVNULL)
    page = (tmp_path / "benchmarks.md").read_text()
    assert page.index("## Targets missed") < page.index("## Targets met")
    assert "llama-server 0." in page and "cores" in page  # the machine and versions
    for section in ("## 1. Latency", "## 2. Streaming", "## 3. Throughput", "## 4. Cold start",
                    "## 5. Swap", "## 5b. A conversation resumed", "## 6. Gateway memory",
                    "## 7. Pull"):
        assert section in page
    for target in ("added latency p50", "added latency p99", "throughput at 16 clients",
                   "gateway RSS", "added latency on the model", "streaming tokens/s",
                   "cold start:", "swap: switchboard", "console open",
                   "resumed after a swap: switchboard", "saving a slot as its runner unloads"):
        assert f"- {target}" in page, target
    for row in ("| model, max_tokens=1 | router |", "| model, max_tokens=1 | switchboard |",
                "| model, max_tokens=1, 16 clients | router |",
                "| stub, 16 client(s) | switchboard |",
                "| stub, 1 client(s) | hypercorn + upstream hop |"):
        assert row in page, row
    samples = json.loads((tmp_path / "benchmarks.json").read_text())["samples"]
    for key in ("stub_latency_c1", "stub_latency_c16", "model_latency_c1", "model_latency_c16",
                "streaming", "stub_throughput", "cold_start", "swap", "resume", "gateway_rss",
                "pull"):
        assert samples[key], key
    assert set(samples["model_latency_c1"]) == {"direct", "router", "switchboard"}
    assert all(len(v) >= 40 for v in samples["model_latency_c1"].values())
    assert (tmp_path / "benchmarks.png").read_bytes()[:4] == b"\x89PNG"
    assert _leftovers() == []
