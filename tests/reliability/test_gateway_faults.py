"""The gateway itself dying: killed mid-pull, it leaves a partial that the next server's pull
resumes from, fetching only what was missing."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import orjson
import pytest

from tests.e2e.server import gemma_models, start_server, wait_until
from tests.fakes.registry import MODEL, FakeRegistry, checkpointed, file_sha256

pytestmark = pytest.mark.usefixtures("real_variants")


def test_a_gateway_killed_mid_pull_resumes_on_restart(tmp_path: Path, gemma_path: Path) -> None:
    size = gemma_path.stat().st_size
    home = tmp_path / "home"
    partial = home / "models" / "partial"
    with FakeRegistry() as registry:
        registry.add_model("library/tiny", "latest", [(MODEL, registry.add_blob(gemma_path))])
        env = {"SWITCHBOARD_HOME": str(home), "SWITCHBOARD_REGISTRY": registry.host}
        first = start_server(tmp_path / "first", gemma_models(gemma_path), env)
        registry.rate = 80e6  # about 3 s for the file, so "half way" can be hit
        try:
            with httpx.stream("POST", f"{first.url}/api/pull", timeout=60,
                              json={"model": "tiny", "insecure": True}) as response:
                for line in response.iter_lines():
                    if line and int(orjson.loads(line).get("completed", 0)) > size // 2:
                        break
            assert wait_until(lambda: checkpointed(partial) >= size // 2, 10)
            first.stop(signal.SIGKILL)
        finally:
            registry.rate = None
            first.stop(signal.SIGKILL)
        kept = checkpointed(partial)
        assert size // 2 <= kept < size

        registry.requests.clear()
        second = start_server(tmp_path / "second", gemma_models(gemma_path), env)
        try:
            with httpx.stream("POST", f"{second.url}/api/pull", timeout=120,
                              json={"model": "tiny", "insecure": True}) as response:
                lines = [orjson.loads(line) for line in response.iter_lines() if line]
            assert lines[-1] == {"status": "success"}
            assert registry.ranged_bytes() < size - kept + size // 16
            reply = httpx.post(f"{second.url}/v1/chat/completions", timeout=120, json={
                "model": "tiny", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]})
            assert reply.status_code == 200
        finally:
            second.stop()
    blob = home / "models" / "blobs" / f"sha256-{file_sha256(gemma_path)}"
    assert file_sha256(blob) == file_sha256(gemma_path)
