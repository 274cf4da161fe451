"""Pull throughput on loopback, side by side with curl, and what verifying costs.

    .venv/bin/python -m bench.pull [--rounds 3] [--file PATH] [--rate MB_PER_S]

One registry on 127.0.0.1 (tests.fakes.registry in its own process, sendfile) serves the
default Gemma GGUF.
Each round, interleaved: ``curl -o`` of the blob; ``switchboard pull`` as users run it (a
fresh process, so interpreter start-up is in); and the downloader in this process, which also
reports when its last byte landed and when the hash was done, so "verified / download" shows
what verifying added after the download (hashing overlapped: near 1; Ollama-style hashing after
it: 1 + hash / download). The fsync that makes the blob durable before its rename is shown
apart: it is the disk's cost, not the hash's.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from runner.catalog import open_store
from runner.download import Downloader, DownloadOptions
from runner.model_source import resolve_source
from runner.settings import DEFAULT_MODEL, Settings
from tests.e2e.server import environment
from tests.fakes.registry import file_sha256


def curl(url: str, out: Path) -> float:
    started = time.perf_counter()
    subprocess.run(["curl", "-sf", "-o", str(out), url], check=True)
    return time.perf_counter() - started


def cli_pull(home: Path, host: str) -> float:
    env = environment(SWITCHBOARD_HOME=str(home), SWITCHBOARD_REGISTRY=host)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "gateway.cli", "pull", "bench", "--insecure"],
                   env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


async def in_process(home: Path, url: str, digest: str, size: int) -> tuple[float, ...]:
    """Seconds from the start to: the blob in place, the last byte written, the hash done."""
    settings = Settings(home=home)
    downloader = Downloader(open_store(settings), DownloadOptions.from_settings(settings))
    try:
        download = await downloader.fetch(digest, url, size)
    finally:
        await downloader.aclose()
    assert download is not None
    return (download.finished_at - download.started_at,
            download.last_byte_at - download.started_at,
            download.verified_at - download.started_at)


def sha256_seconds(path: Path) -> float:
    started = time.perf_counter()
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return time.perf_counter() - started


def measure(path: Path, rounds: int = 3, rate: float | None = None) -> dict[str, list[float]]:
    """Interleaved rounds of curl, the CLI and the in-process downloader on one registry;
    seconds per round for each, plus 'download' and 'verified' marks and 'hash' (sha256 of
    the whole file afterwards)."""
    size = path.stat().st_size
    rows: dict[str, list[float]] = {
        "curl": [], "cli": [], "inproc": [], "download": [], "verified": [], "hash": []}
    digest = "sha256:" + file_sha256(path)
    limit = ["--rate", str(rate * 1e6)] if rate else []
    server = subprocess.Popen([sys.executable, "-m", "tests.fakes.registry", str(path), *limit],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        host = f"127.0.0.1:{server.stdout.readline().strip()}"
        url = f"http://{host}/v2/library/bench/blobs/{digest}"
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            for _ in range(rounds):
                rows["curl"].append(curl(url, root / "curl.out"))
                for name in ("cli", "inproc"):
                    shutil.rmtree(root / name, ignore_errors=True)
                rows["cli"].append(cli_pull(root / "cli", host))
                total, download, verified = asyncio.run(
                    in_process(root / "inproc", url, digest, size))
                rows["inproc"].append(total)
                rows["download"].append(download)
                rows["verified"].append(verified)
            rows["hash"] = [sha256_seconds(root / "curl.out") for _ in range(3)]
    finally:
        server.terminate()
        server.wait(10)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--file", type=Path)
    parser.add_argument("--rate", type=float,
                        help="cap the registry at this many MB/s (a fast link, not loopback)")
    args = parser.parse_args()
    path = args.file or resolve_source(Settings().models[DEFAULT_MODEL].source, Settings().home)
    mb = path.stat().st_size / 1e6
    med = {name: statistics.median(values)
           for name, values in measure(path, args.rounds, args.rate).items()}
    hashing = med["hash"]
    link = f"registry capped at {args.rate:g} MB/s" if args.rate else "loopback, uncapped"
    print(f"file: {path.name}, {mb:.1f} MB; {link}; {args.rounds} interleaved rounds, medians")
    print(f"curl                      {med['curl']:6.2f} s  {mb / med['curl']:7.0f} MB/s")
    print(f"switchboard pull (CLI)    {med['cli']:6.2f} s  {mb / med['cli']:7.0f} MB/s  "
          f"ratio vs curl {med['curl'] / med['cli']:.2f}")
    print(f"downloader (in process)   {med['inproc']:6.2f} s  {mb / med['inproc']:7.0f} MB/s  "
          f"ratio vs curl {med['curl'] / med['inproc']:.2f}")
    print(f"  last byte written at    {med['download']:6.2f} s; hash done at "
          f"{med['verified']:.2f} s: verified / download "
          f"{med['verified'] / med['download']:.3f} (hashing overlapped)")
    print(f"  fsync + rename          {med['inproc'] - med['verified']:6.2f} s; "
          f"total / download {med['inproc'] / med['download']:.3f}")
    print(f"  sha256 after the fact   {hashing:6.2f} s; would make verified / download "
          f"{(med['download'] + hashing) / med['download']:.3f}")


if __name__ == "__main__":
    main()
