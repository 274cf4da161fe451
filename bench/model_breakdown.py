"""What each layer adds on the model, on one and the same runner: switchboard's own runner
asked directly (with its key), through a bare Hypercorn hop (:mod:`bench.floor`), and through
switchboard; each request less the compute llama-server reports (``timings``), interleaved.

    .venv/bin/python -m bench.model_breakdown [--requests 300]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import httpx
import uvloop

from bench.load import chat_body
from bench.peers import (
    CTX,
    MODEL,
    Peer,
    added_latency,
    outside_compute,
    start_floor,
    start_switchboard,
)
from runner.model_source import resolve_source
from runner.settings import Settings
from tests.e2e.server import children


def runner_of(board: Peer) -> Peer:
    """The gateway's one runner as a peer: its port from its command line, its key from its
    environment (both readable by the user who started it)."""
    child = children(board.pid)[0]
    argv = Path(f"/proc/{child}/cmdline").read_text().split("\0")
    environ = dict(entry.split("=", 1) for entry in
                   Path(f"/proc/{child}/environ").read_text().split("\0") if "=" in entry)
    port = argv[argv.index("--port") + 1]
    key = ("Bearer " + environ["LLAMA_API_KEY"]).encode()
    return Peer("its runner, directly", f"http://127.0.0.1:{port}", MODEL, child,
                lambda: None, ((b"Authorization", key),))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    settings = Settings()
    gguf = resolve_source(settings.models[MODEL].source, settings.home)
    with tempfile.TemporaryDirectory(prefix="switchboard-breakdown-") as tmp:
        work = Path(tmp)
        board = start_switchboard(work, {MODEL: {"source": str(gguf), "ctx_size": int(CTX),
                                                 "chat_template": "gemma"}})
        hop: Peer | None = None
        try:
            httpx.post(f"{board.url}/v1/chat/completions", content=chat_body(MODEL),
                       headers={"content-type": "application/json"}, timeout=300)  # loads it
            runner = runner_of(board)
            hop = start_floor("relay", work, runner)
            hop.headers = runner.headers  # the hop passes the key on
            peers = [runner, hop, board]
            answers: dict[str, list[bytes]] = {}
            found = uvloop.run(added_latency(peers, args.requests, 1, chat_body(MODEL), answers))
        finally:
            if hop is not None:
                hop.stop()
            board.stop()
    base = statistics.median(outside_compute(found[runner.name], answers[runner.name]))
    print(f"{args.requests} requests each, max_tokens=1, less llama-server's reported compute")
    for peer in peers:
        outside = statistics.median(outside_compute(found[peer.name], answers[peer.name]))
        print(f"{peer.name:28} p50 {outside * 1000:6.2f} ms  added {(outside - base) * 1000:+.2f}")


if __name__ == "__main__":
    main()
