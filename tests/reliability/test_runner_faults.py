"""Runners that cannot start: each failure is a clear 503 naming the cause, and the gateway
stays healthy and serves its other models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.server import Served, start_server

pytestmark = pytest.mark.usefixtures("real_variants")
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, gemma_path: Path) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("runner-faults")
    junk = root / "junk.gguf"
    junk.write_bytes(b"not a model at all" * 100)
    half = root / "half.gguf"
    with gemma_path.open("rb") as whole:
        half.write_bytes(whole.read(100 << 20))
    system = root / "system-backends"
    (system / "not-executable").mkdir(parents=True)
    (system / "not-executable" / "run.sh").write_text("#!/bin/sh\nexec true\n")  # mode 0644
    models: dict[str, dict[str, Any]] = {
        "gemma3:270m": {"source": str(gemma_path), "ctx_size": 2048, "chat_template": "gemma"},
        "junk": {"source": str(junk)},
        "half": {"source": str(half)},
        "gone": {"source": str(root / "deleted.gguf")},
        "noexec": {"source": str(gemma_path), "backend": "not-executable"},
        "nobackend": {"source": str(gemma_path), "backend": "never-installed"},
    }
    server = start_server(root, models, {"SWITCHBOARD_SYSTEM_BACKENDS": str(system)})
    yield server
    server.stop()


@pytest.mark.parametrize(("model", "says"), [
    ("junk", "junk.gguf is not a GGUF file"),
    ("half", "half.gguf is truncated: 104857600 bytes, its header describes 253113024"),
    ("gone", "deleted.gguf does not exist"),
    ("noexec", "cannot execute"),
    ("nobackend", "switchboard backends install never-installed"),
])
def test_a_model_that_cannot_start_gets_a_503_saying_why(served: Served, model: str,
                                                         says: str) -> None:
    response = httpx.post(f"{served.url}/v1/chat/completions", timeout=120,
                          json={"model": model, "messages": HI, "max_tokens": 1})
    assert response.status_code == 503
    error = response.json()["error"]
    assert says in error["message"], error["message"]
    assert "Traceback" not in error["message"]
    # The gateway is unharmed and its good model still answers.
    ok = httpx.post(f"{served.url}/v1/chat/completions", timeout=120,
                    json={"model": "gemma3:270m", "messages": HI, "max_tokens": 1})
    assert ok.status_code == 200
    assert httpx.get(f"{served.url}/health").status_code == 200
