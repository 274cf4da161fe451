"""CPU the gateway spends per relayed stream token, with tokens spaced the way a model's are.

On a 2-core machine every microsecond the gateway runs per token is taken from llama-server's
compute threads, so this is the figure behind streaming tokens/s. The stub upstream sends one
write per token, ``--interval`` apart (no model compute, so the figure is the gateway's own);
the gateway's CPU comes from ``/proc/PID/task/*/schedstat`` around each stream.

    .venv/bin/python -m bench.relay_cpu [--streams 8] [--tokens 256] [--interval 0.013]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from bench.peers import MODEL, STUB_ENV, per_token_cpu, start_switchboard, stub_wrapper
from tests.fakes.gguf import write_empty_gguf


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--interval", type=float, default=0.013,
                        help="seconds between tokens (Gemma 270M on 2 cores: about 0.013)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="switchboard-relay-cpu-") as tmp:
        work = Path(tmp)
        (work / "bin").mkdir()
        wrapper = stub_wrapper(work)
        dummy = work / "stub.gguf"
        write_empty_gguf(dummy)
        board = start_switchboard(work, {MODEL: {"source": str(dummy)}},
                                  STUB_ENV | {"SWITCHBOARD_LLAMA_SERVER": str(wrapper)})
        try:
            per_token = per_token_cpu(board, args.streams, args.tokens, args.interval)
        finally:
            board.stop()
    total = [c * 1e6 for c, _ in per_token]
    system = sum(s for _, s in per_token) / sum(c for c, _ in per_token)
    print(f"{args.streams} streams of {args.tokens} tokens, {args.interval * 1000:g} ms apart")
    print(f"gateway CPU per token: median {statistics.median(total):.0f} us "
          f"(range {min(total):.0f} to {max(total):.0f}; {system:.0%} in the kernel)")


if __name__ == "__main__":
    main()
