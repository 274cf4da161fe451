"""On a machine with an NVIDIA GPU (``make gpu-check``): the cuda variant is chosen, a runner's
VRAM as NVML measures it is close to the estimate, and a replicated model holds one copy per
device. Without a GPU these skip; with ``--gpu-required`` (as ``make gpu-check`` runs them)
they fail instead, so the check never passes on a machine that has none.

The figures go to ``--gpu-report`` (default ``docs/gpu-check.md``)."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from runner.memory import gpu_library, gpus
from runner.payloads import packaged_variants
from runner.variants import order_variants, read_cpu_flags
from tests.e2e.server import Served, gemma_models, start_server, wait_until

LINES: list[str] = []


def _require_gpu(required: bool) -> None:
    reason = None
    if not gpus():
        reason = "no NVIDIA GPU (NVML found none)"
    elif not any(v.startswith("cuda") for v in packaged_variants()):
        reason = "no cuda payload: switchboard build-runners --variant cuda"
    if reason is not None:
        if required:
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(scope="module", autouse=True)
def report(request: pytest.FixtureRequest) -> Iterator[None]:
    _require_gpu(request.config.getoption("--gpu-required"))
    yield
    devices = gpus()
    Path(request.config.getoption("--gpu-report")).write_text("# `make gpu-check`\n\n" + "\n".join(
        [f"- GPU {d.index}: {d.name}, {d.total / 2**30:.1f} GiB" for d in devices] + [""]
        + LINES) + "\n")


def test_the_cuda_variant_is_chosen_first() -> None:
    order = order_variants(packaged_variants(), read_cpu_flags(), gpu_library())
    LINES.append(f"- variants in order: {', '.join(order)}")
    assert order[0].startswith("cuda")


def _ask(served: Served, model: str, tokens: int = 8) -> None:
    httpx.post(f"{served.url}/v1/chat/completions", timeout=300, json={
        "model": model, "messages": [{"role": "user", "content": "Count to a hundred"}],
        "max_tokens": tokens}).raise_for_status()


def test_nvml_sees_what_the_runner_holds_and_it_is_near_the_estimate(
        tmp_path: Path, gemma_path: Path) -> None:
    before = sum(d.free for d in gpus())
    models = gemma_models(gemma_path)
    models["gemma3:270m"]["gpu_layers"] = 999
    served = start_server(tmp_path, models)
    try:
        _ask(served, "gemma3:270m")
        (runner,) = httpx.get(f"{served.url}/api/ps", timeout=10).json()["models"]
        after = sum(d.free for d in gpus())
    finally:
        served.stop()
    vram, estimated = runner["size_vram"], runner["memory"]["estimated_bytes"]
    measured = runner["memory"]["actual_bytes"]
    LINES.append(f"- gemma3:270m, all layers on the GPU: estimated {estimated / 2**20:.0f} MiB, "
                 f"measured {measured / 2**20:.0f} MiB (RSS + VRAM), VRAM {vram / 2**20:.0f} "
                 f"MiB; NVML free fell {(before - after) / 2**20:.0f} MiB; variant "
                 f"{runner['variant']}")
    assert runner["variant"].startswith("cuda") and vram > 0
    assert abs((before - after) - vram) < 256 << 20  # NVML and the runner's figure agree
    assert 0.5 < measured / estimated < 2.0


def test_a_replicated_model_holds_one_copy_per_device(tmp_path: Path, gemma_path: Path) -> None:
    count = len(gpus())
    if count < 2:
        LINES.append("- one copy per device: one GPU here, nothing to pin")
        pytest.skip("one GPU: one copy, spread over it")
    models = gemma_models(gemma_path)
    models["gemma3:270m"] |= {"replicas": count, "parallel": 1, "gpu_layers": 999}
    served = start_server(tmp_path, models)
    try:
        with concurrent.futures.ThreadPoolExecutor(count * 2) as pool:
            list(pool.map(lambda _: _ask(served, "gemma3:270m", 256), range(count * 2)))
        assert wait_until(lambda: len(httpx.get(f"{served.url}/api/ps", timeout=10).json()[
            "models"]) == count, 30)
        runners = httpx.get(f"{served.url}/api/ps", timeout=10).json()["models"]
    finally:
        served.stop()
    pinned = sorted(r["gpu"] for r in runners)
    LINES.append(f"- replicas {count} on {count} GPUs: copies pinned to {pinned}")
    assert pinned == list(range(count))
