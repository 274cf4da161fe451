"""What the default model's chat template costs per request, outside the model's compute: one
llama-server (switchboard's payload) per template, asked in turn, each request less the
compute it reports (``timings``). ``ours``: the bundled Gemma template switchboard runs the
default model with (it can call tools); ``gguf``: the GGUF's own (it has none, so llama.cpp's
ChatML through Jinja); ``builtin``: llama.cpp's C++ Gemma format, no Jinja at all.

    .venv/bin/python -m bench.template_cost [--blocks 40]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from bench.peers import CTX, MODEL, extract_binary
from runner.model_source import resolve_source, resolve_template
from runner.settings import Settings
from tests.e2e.server import free_port

BODY = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


def _start(binary: Path, gguf: Path, args: list[str], log: Path) -> tuple[subprocess.Popen[bytes],
                                                                            str]:
    port = free_port()
    proc = subprocess.Popen([str(binary), "--model", str(gguf), "--port", str(port),
                             "--ctx-size", CTX, "--parallel", "1", *args],
                            stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"llama-server did not start: {log.read_text()[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.template_cost")
    parser.add_argument("--blocks", type=int, default=40, help="blocks of 10 requests each")
    args = parser.parse_args()
    settings = Settings()
    gguf = resolve_source(settings.models[MODEL].source, settings.home)
    template = resolve_template("gemma")
    variants = {
        "ours": ["--jinja", "--chat-template-file", str(template)],
        "gguf": ["--jinja"],
        "builtin": ["--no-jinja", "--chat-template", "gemma"],
    }
    with tempfile.TemporaryDirectory(prefix="template-cost-") as tmp:
        work = Path(tmp)
        binary = extract_binary(work)
        servers = {name: _start(binary, gguf, extra, work / f"{name}.log")
                   for name, extra in variants.items()}
        outside: dict[str, list[float]] = {name: [] for name in servers}
        try:
            with httpx.Client(timeout=60) as client:
                for _ in range(args.blocks):
                    for name, (_, url) in servers.items():  # interleaved, block by block
                        for _ in range(10):
                            started = time.perf_counter()
                            answer = client.post(f"{url}/v1/chat/completions", json=BODY)
                            took = (time.perf_counter() - started) * 1000
                            timings = answer.json()["timings"]
                            outside[name].append(
                                took - timings["prompt_ms"] - timings["predicted_ms"])
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(30)
    base = statistics.median(outside["gguf"])
    print("| template | outside compute, p50 | vs the GGUF's own |")
    print("|---|---|---|")
    for name, values in outside.items():
        p50 = statistics.median(values)
        print(f"| {name} | {p50:.2f} ms | {p50 - base:+.2f} ms |")


if __name__ == "__main__":
    main()
