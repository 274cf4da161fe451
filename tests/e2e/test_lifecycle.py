"""Runner payload dirs and child processes across clean stops, hard kills and restarts."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.e2e.server import alive, gemma_models, start_server, wait_until

BODY = {"model": "gemma3:270m", "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2}

pytestmark = pytest.mark.usefixtures("real_variants")


def _load_runner(url: str) -> None:
    response = httpx.post(f"{url}/v1/chat/completions", json=BODY, timeout=120)
    assert response.status_code == 200, response.text


def test_sigterm_removes_the_dir_and_stops_every_runner(tmp_path: Path,
                                                        gemma_path: Path) -> None:
    served = start_server(tmp_path, gemma_models(gemma_path))
    _load_runner(served.url)
    runners = served.runner_pids()
    assert len(runners) == 1
    (pid_dir,) = served.pid_dirs()
    assert served.stop(signal.SIGTERM) == 0
    assert not pid_dir.exists()
    assert not any(alive(pid) for pid in runners)
    assert "runner stop:" in served.log_text()


def test_kill9_takes_runners_along_and_next_start_sweeps(tmp_path: Path,
                                                         gemma_path: Path) -> None:
    served = start_server(tmp_path, gemma_models(gemma_path))
    _load_runner(served.url)
    (runner,) = served.runner_pids()
    (stale,) = served.pid_dirs()
    served.proc.kill()
    served.proc.wait(10)
    assert wait_until(lambda: not alive(runner), 2.0), "runner outlived its gateway by 2 s"
    assert stale.exists(), "a hard kill cannot clean up; the next start must"

    keeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    live = served.tmpdir / "switchboard_live_owner"
    live.mkdir()
    (live / "switchboard.pid").write_text(str(keeper.pid))
    try:
        again = start_server(tmp_path, gemma_models(gemma_path))
        try:
            assert not stale.exists()
            assert live.exists(), "a dir whose owner is alive must be left alone"
            assert len(again.pid_dirs()) == 2  # ours and the live owner's
        finally:
            again.stop()
    finally:
        keeper.kill()
        keeper.wait()


def test_deleted_binary_is_restored_before_the_next_launch(tmp_path: Path,
                                                           gemma_path: Path) -> None:
    served = start_server(tmp_path, gemma_models(gemma_path))
    try:
        (pid_dir,) = served.pid_dirs()
        binaries = list(pid_dir.glob("runners/*/llama-server"))
        assert binaries
        for binary in binaries:
            binary.unlink()
        _load_runner(served.url)
        assert "extracting it again" in served.log_text()
    finally:
        served.stop()



def test_sigterm_lets_streams_in_flight_finish_and_answers_new_requests_503(
    tmp_path: Path, gemma_path: Path
) -> None:
    import threading

    import httpx

    served = start_server(tmp_path, gemma_models(gemma_path))
    url = f"{served.url}/v1/chat/completions"
    hi = [{"role": "user", "content": "hi"}]
    httpx.post(url, json={"model": "gemma3:270m", "messages": hi, "max_tokens": 1}, timeout=60)
    lines: list[str] = []
    body = {"model": "gemma3:270m", "messages": hi, "max_tokens": 80, "stream": True,
            "ignore_eos": True}

    def stream() -> None:
        with httpx.stream("POST", url, json=body, timeout=60) as response:
            lines.extend(line for line in response.iter_lines() if line)

    reader = threading.Thread(target=stream)
    reader.start()
    assert wait_until(lambda: len(lines) >= 3, 30)
    served.proc.send_signal(signal.SIGTERM)
    late = httpx.post(url, json={"model": "gemma3:270m", "messages": hi}, timeout=10)
    assert late.status_code == 503 and late.json()["error"]["code"] == "shutting_down"
    assert late.headers["retry-after"] == "1"
    reader.join(60)
    assert lines[-1] == "data: [DONE]" and len(lines) > 80  # the whole stream arrived
    assert served.proc.wait(30) == 0
    assert served.pid_dirs() == []
