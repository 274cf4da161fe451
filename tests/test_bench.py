"""The benchmark harness's parts work (the whole `make bench` run takes minutes: not here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import uvloop

from bench.load import Target, chat_body, percentile, run
from bench.peers import Results, profile_shares, write_chart, write_markdown
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
