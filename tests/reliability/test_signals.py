"""Signals other than SIGTERM (issue 18): SIGHUP, which a closing terminal or a supervisor
sends, used to kill the gateway at once, cutting streams with no error event."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import httpx
import orjson

from tests.e2e.server import start_fake_server, wait_until

HI = [{"role": "user", "content": "hi"}]


def test_sighup_drains_like_sigterm_the_stream_ends_and_new_requests_get_503(
    tmp_path: Path, fake_runner: Path
) -> None:
    # One second between chunks: the signal lands while the stream is half sent.
    served = start_fake_server(tmp_path, fake_runner,
                               {"slow": {"args": ["--fake-chunk-delay", "1"]}})
    url = f"{served.url}/v1/chat/completions"
    lines: list[str] = []

    def stream() -> None:
        try:
            with httpx.stream("POST", url, timeout=30,
                              json={"model": "slow", "messages": HI, "stream": True}) as reply:
                lines.extend(line for line in reply.iter_lines() if line)
        except httpx.HTTPError as exc:  # a cut stream: the assertions below say so
            lines.append(f"cut: {exc!r}")

    reader = threading.Thread(target=stream)
    try:
        reader.start()
        assert wait_until(lambda: len(lines) >= 1, 30)
        served.proc.send_signal(signal.SIGHUP)
        # Asked once the drain has begun, so the answer cannot be a request that beat it.
        assert wait_until(lambda: "draining:" in served.log_text()
                          or served.proc.poll() is not None, 10)
        late = httpx.post(url, json={"model": "slow", "messages": HI}, timeout=10)
        assert late.status_code == 503 and late.json()["error"]["code"] == "shutting_down"
        reader.join(30)
        assert lines[-1] == "data: [DONE]"
        chunks = [orjson.loads(line.removeprefix("data: ")) for line in lines[:-1]]
        assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks
                       if c.get("choices")) == "fake stream reply"
        assert not any("error" in c for c in chunks)
        assert served.proc.wait(30) == 0
        assert served.pid_dirs() == []
    finally:
        served.stop(signal.SIGKILL)
        reader.join(30)


def test_under_nohup_sighup_stays_ignored(tmp_path: Path, fake_runner: Path) -> None:
    # An ignored signal stays ignored across exec: the server starts as `nohup` starts it.
    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        served = start_fake_server(tmp_path, fake_runner, {"fake": {}})
    finally:
        signal.signal(signal.SIGHUP, before)
    try:
        served.proc.send_signal(signal.SIGHUP)
        assert not wait_until(lambda: served.proc.poll() is not None
                              or "draining:" in served.log_text(), 2)
        assert httpx.get(f"{served.url}/health", timeout=5).status_code == 200
    finally:
        assert served.stop() == 0
