"""Run `switchboard serve` as a real subprocess, as users do, with its own tmp and home."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.fakes.gguf import write_empty_gguf


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def children(pid: int) -> list[int]:
    """Direct children of ``pid``, read from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    """Running (not merely a zombie awaiting its reaper)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def wait_until(predicate: Any, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    port: int
    tmpdir: Path
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def runner_pids(self) -> list[int]:
        return children(self.proc.pid)

    def runner_address(self) -> tuple[int, str]:
        """(port, API key) of the one runner, read from its command line and environment."""
        (pid,) = self.runner_pids()
        argv = cmdline(pid)
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        key = next(e.split(b"=", 1)[1].decode() for e in environ
                   if e.startswith(b"LLAMA_API_KEY="))
        return int(argv[argv.index("--port") + 1]), key

    def pid_dirs(self) -> list[Path]:
        return sorted(p.parent for p in self.tmpdir.glob("switchboard*/switchboard.pid"))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def write_config(path: Path, models: dict[str, dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump({"models": models}))
    return path


def gemma_models(gemma_path: Path) -> dict[str, dict[str, Any]]:
    return {"gemma3:270m": {"source": str(gemma_path), "ctx_size": 2048,
                            "chat_template": "gemma", "aliases": ["gemma"]}}


def environment(**extra: str) -> dict[str, str]:
    """This process's environment without SWITCHBOARD_* knobs, plus ``extra``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    return {**base, **extra}


def start_server(
    root: Path,
    models: dict[str, dict[str, Any]],
    env: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> Served:
    tmpdir = root / "tmp"
    tmpdir.mkdir(parents=True, exist_ok=True)
    config = write_config(root / "switchboard.yaml", models)
    port = free_port()
    log = root / f"server-{port}.log"
    full_env = environment(**{
        "SWITCHBOARD_TMPDIR": str(tmpdir),
        "SWITCHBOARD_HOME": str(root / "home"),
        "SWITCHBOARD_LOG_LEVEL": "info",
        **(env or {}),
    })
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "--config", str(config), "serve",
             "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env=full_env,
        )
    served = Served(proc, port, tmpdir, log)

    def healthy() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}:\n{served.log_text()}")
        try:
            return httpx.get(f"{served.url}/health", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    if not wait_until(healthy, timeout):
        served.stop(signal.SIGKILL)
        raise RuntimeError(f"server not healthy in {timeout}s:\n{served.log_text()}")
    return served


def start_fake_server(
    root: Path,
    fake_runner: Path,
    models: dict[str, dict[str, Any]],
    env: dict[str, str] | None = None,
) -> Served:
    """:func:`start_server` with the fault-injection runner for llama-server, each model on
    one empty GGUF unless it names its own ``source``."""
    dummy = root / "dummy.gguf"
    write_empty_gguf(dummy)
    return start_server(root, {name: {"source": str(dummy), **config}
                               for name, config in models.items()}, {
        "SWITCHBOARD_LLAMA_SERVER": str(fake_runner), "SWITCHBOARD_LLM_LIBRARY": "system",
        **(env or {})})
