"""A model's companions on the real runner: a draft model for speculative decoding and LoRA
adapters load with it (their flags on its command line), it answers, and their weights count
in its memory estimate."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.server import Served, gemma_models, start_server

pytestmark = pytest.mark.usefixtures("real_variants")
HI = [{"role": "user", "content": "Say hi"}]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, gemma_path: Path) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("companions")
    models = gemma_models(gemma_path)
    plain = {**models["gemma3:270m"], "aliases": []}
    # The model is its own draft: the same vocabulary, which is all llama-server asks.
    models["drafted"] = {**plain, "draft": str(gemma_path)}
    server = start_server(root, models)
    yield server
    server.stop()


def _runner(served: Served, model: str) -> dict[str, object]:
    answer = httpx.post(f"{served.url}/v1/chat/completions", timeout=120,
                        json={"model": model, "messages": HI, "max_tokens": 4})
    assert answer.status_code == 200, answer.text
    (runner,) = [r for r in httpx.get(f"{served.url}/api/ps").json()["models"]
                 if r["name"] == model]
    return runner


def _argv(runner: dict[str, object]) -> list[str]:
    return Path(f"/proc/{runner['pid']}/cmdline").read_bytes().decode().split("\0")


def test_a_draft_model_runs_beside_its_model_and_counts_in_its_memory(
        served: Served, gemma_path: Path) -> None:
    plain = _runner(served, "gemma3:270m")
    drafted = _runner(served, "drafted")
    argv = _argv(drafted)
    assert argv[argv.index("--model-draft") + 1] == str(gemma_path)
    estimate = drafted["memory"]["estimated_bytes"]  # type: ignore[index]
    alone = plain["memory"]["estimated_bytes"]  # type: ignore[index]
    assert estimate - alone == gemma_path.stat().st_size
