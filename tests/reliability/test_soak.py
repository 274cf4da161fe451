"""The soak: mixed chat, completions and embeddings across two models that must swap (room for
one), for 10 minutes (`--soak-seconds`). Nothing may fail, and the gateway must end where it
started: no leaked runner, file descriptor or temporary file."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.e2e.server import children, gemma_models, start_server

# Its own deadline bounds it (--soak-seconds); the suite-wide 300 s timeout would cut it short.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600), pytest.mark.usefixtures("real_variants")]
HI = [{"role": "user", "content": "hi"}]


def _fds(pid: int) -> int:
    return sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())


def _files(root: Path) -> int:
    return sum(1 for _ in root.rglob("*"))


def test_mixed_traffic_across_swapping_models_leaks_nothing(
    tmp_path: Path, gemma_path: Path, pytestconfig: pytest.Config
) -> None:
    seconds = float(pytestconfig.getoption("--soak-seconds"))
    models = gemma_models(gemma_path)
    models["other"] = {**models["gemma3:270m"], "ctx_size": 1024, "aliases": []}
    served = start_server(tmp_path, models, {"SWITCHBOARD_MAX_LOADED_MODELS": "1",
                                             "SWITCHBOARD_LOG_LEVEL": "warning"})
    rng = random.Random(11)
    outcomes: Counter[str] = Counter()
    try:
        for name in ("gemma3:270m", "other"):  # warm: each model loaded once before counting
            httpx.post(f"{served.url}/v1/chat/completions", timeout=120,
                       json={"model": name, "messages": HI, "max_tokens": 1}).raise_for_status()
        fds_before = _fds(served.proc.pid)
        files_before = _files(served.tmpdir)

        async def client(number: int) -> None:
            async with httpx.AsyncClient(base_url=served.url, timeout=180) as http:
                deadline = time.monotonic() + seconds
                while time.monotonic() < deadline:
                    model = rng.choice(["gemma3:270m", "other"])
                    kind = rng.choice(["chat", "stream", "completion", "embedding"])
                    if kind == "embedding":
                        response = await http.post("/v1/embeddings",
                                                   json={"model": model, "input": "hello"})
                    elif kind == "completion":
                        response = await http.post("/v1/completions", json={
                            "model": model, "prompt": "Once", "max_tokens": 4})
                    else:
                        response = await http.post("/v1/chat/completions", json={
                            "model": model, "messages": HI, "max_tokens": 4,
                            "stream": kind == "stream"})
                    outcomes[f"{kind} {response.status_code}"] += 1
                    if kind == "stream":
                        assert response.text.rstrip().endswith("data: [DONE]")

        async def run() -> None:
            await asyncio.gather(*(client(n) for n in range(4)))

        asyncio.run(run())
        errors = {k: v for k, v in outcomes.items() if not k.endswith(" 200")}
        assert errors == {}, errors
        assert sum(outcomes.values()) > seconds / 10  # it did work, not just wait
        # At most one runner per model and mode may remain loaded (chat and embeddings);
        # anything more is a leak.
        assert len(children(served.proc.pid)) <= 2
        assert _fds(served.proc.pid) <= fds_before + 8
        assert _files(served.tmpdir) <= files_before + 2
        print(f"{sum(outcomes.values())} requests in {seconds:.0f} s: {dict(outcomes)}; "
              f"fds {fds_before} -> {_fds(served.proc.pid)}")
    finally:
        served.stop()
    assert children(served.proc.pid) == [] and served.pid_dirs() == []
