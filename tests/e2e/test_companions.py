"""A model's companions on the real runner: a draft model for speculative decoding and LoRA
adapters load with it (their flags on its command line), it answers, and their weights count
in its memory estimate."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.server import Served, gemma_models, start_server
from tests.fakes.lora import write_lora

pytestmark = pytest.mark.usefixtures("real_variants")
HI = [{"role": "user", "content": "Say hi"}]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, gemma_path: Path) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("companions")
    models = gemma_models(gemma_path)
    plain = {**models["gemma3:270m"], "aliases": []}
    # The model is its own draft: the same vocabulary, which is all llama-server asks.
    models["drafted"] = {**plain, "draft": str(gemma_path)}
    lora = write_lora(root / "lora.gguf", gemma_path)
    models["tuned"] = {**plain, "adapters": [{"source": str(lora), "scale": 0.5},
                                             {"source": str(lora), "scale": 1.0}]}
    server = start_server(root, models)
    yield server
    server.stop()


def _runner(served: Served, model: str) -> dict[str, Any]:
    answer = httpx.post(f"{served.url}/v1/chat/completions", timeout=120,
                        json={"model": model, "messages": HI, "max_tokens": 4})
    assert answer.status_code == 200, answer.text
    runners: list[dict[str, Any]] = httpx.get(f"{served.url}/api/ps").json()["models"]
    (runner,) = [r for r in runners if r["name"] == model]
    return runner


def _argv(runner: dict[str, Any]) -> list[str]:
    return Path(f"/proc/{runner['pid']}/cmdline").read_bytes().decode().split("\0")


def test_a_draft_model_runs_beside_its_model_and_counts_in_its_memory(
        served: Served, gemma_path: Path) -> None:
    plain = _runner(served, "gemma3:270m")
    drafted = _runner(served, "drafted")
    argv = _argv(drafted)
    assert argv[argv.index("--model-draft") + 1] == str(gemma_path)
    estimate = drafted["memory"]["estimated_bytes"] - plain["memory"]["estimated_bytes"]
    assert estimate == gemma_path.stat().st_size


def test_adapters_load_with_their_scales_and_a_request_may_pick_its_own(
        served: Served, tmp_path: Path) -> None:
    tuned = _runner(served, "tuned")
    argv = _argv(tuned)
    scaled = argv[argv.index("--lora-scaled") + 1].split(",")
    assert [part.rsplit(":", 1)[1] for part in scaled] == ["0.5", "1"]

    def ask(lora: object) -> httpx.Response:
        return httpx.post(f"{served.url}/v1/chat/completions", timeout=120, json={
            "model": "tuned", "messages": HI, "max_tokens": 2, "lora": lora})

    assert ask([{"id": 0, "scale": 0.0}, {"id": 1, "scale": 2.0}]).status_code == 200
    unknown = ask([{"id": 2, "scale": 1.0}])
    assert unknown.status_code == 400
    assert "'tuned' has 2 adapters (lora ids 0-1)" in unknown.json()["error"]["message"]
    bare = httpx.post(f"{served.url}/v1/chat/completions", timeout=120, json={
        "model": "gemma3:270m", "messages": HI, "max_tokens": 2,
        "lora": [{"id": 0, "scale": 1.0}]})
    assert bare.status_code == 400 and "has no adapters" in bare.json()["error"]["message"]
    shaped = ask({"id": 0})
    assert shaped.status_code == 400 and "'lora' must be" in shaped.json()["error"]["message"]
