from __future__ import annotations

from pathlib import Path

import pytest

from runner.gguf_header import GGUFInfo
from runner.memory import estimate, full_swa_cost, gpu_library, gpus, system_memory
from runner.settings import load_settings, parse_bytes
from runner.units import MiB, format_bytes


def _info(**arch: int) -> GGUFInfo:
    base = {"block_count": 18, "embedding_length": 640, "attention.head_count": 4,
            "attention.head_count_kv": 1, "attention.key_length": 256,
            "attention.value_length": 256, "feed_forward_length": 2048}
    base.update(arch)
    metadata: dict[str, int | float | bool | str] = {
        "general.architecture": "gemma3", "tokenizer.ggml.tokens": 262144,
        **{f"gemma3.{k}": v for k, v in base.items()},
    }
    return GGUFInfo(metadata, tensor_bytes=235 * MiB, tensor_count=236)


def test_estimate_kv_matches_llama_server_for_sliding_window_layers() -> None:
    # llama-server logs 24 MiB (3 global layers x 8192 cells) + 15 MiB (15 SWA layers x 1024).
    assert estimate(_info(**{"attention.sliding_window": 512}), 8192, 1).kv_cache == 39 * MiB
    assert estimate(_info(**{"attention.sliding_window": 512}), 2048, 1).kv_cache == 21 * MiB


def test_swa_full_counts_every_cell_of_the_sliding_window_layers() -> None:
    # --swa-full: llama-server sizes the 15 SWA layers like the 3 global ones (4096 cells).
    info = _info(**{"attention.sliding_window": 512})
    assert estimate(info, 4096, 1, swa_full=True).kv_cache == 18 * 4096 * 512 * 2
    assert full_swa_cost(info, 4096, 1) == 15 * (4096 - 1024) * 512 * 2


def test_swa_full_costs_nothing_for_a_model_without_sliding_window_layers() -> None:
    assert full_swa_cost(_info(), 4096, 1) == 0


def test_estimate_without_sliding_window_counts_every_layer_in_full() -> None:
    assert estimate(_info(), 8192, 1).kv_cache == 18 * 8192 * 512 * 2


def test_estimate_grows_with_context_and_parallel_slots() -> None:
    info = _info(**{"attention.sliding_window": 512})
    assert estimate(info, 8192, 1).total > estimate(info, 2048, 1).total
    assert estimate(info, 2048, 4).kv_cache > estimate(info, 2048, 1).kv_cache
    assert estimate(info, 2048, 1).weights == 235 * MiB


def test_system_memory_reads_meminfo(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       2048 kB\nMemFree: 100 kB\nMemAvailable:   1024 kB\n")
    assert system_memory(meminfo) == (2048 * 1024, 1024 * 1024)
    assert system_memory(tmp_path / "missing") == (0, 0)


def test_gpus_without_nvidia_hardware_is_empty_not_an_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import pynvml

    def no_driver() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", no_driver)
    assert gpus() == []
    assert gpu_library() is None


def test_gpus_when_nvml_fails_mid_call_is_empty_and_shut_down(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import pynvml

    shut: list[bool] = []

    def broken() -> int:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN)

    monkeypatch.setattr(pynvml, "nvmlInit", lambda: None)
    monkeypatch.setattr(pynvml, "nvmlShutdown", lambda: shut.append(True))
    monkeypatch.setattr(pynvml, "nvmlDeviceGetCount", broken)
    assert gpus() == []
    assert shut == [True]


def test_format_bytes() -> None:
    assert format_bytes(3.1 * 2**30) == "3.1 GiB"
    assert format_bytes(512 * MiB) == "512 MiB"


@pytest.mark.parametrize(("raw", "count"), [("1.5GiB", 3 * 2**29), ("512MiB", 512 * MiB),
                                            ("2GB", 2 * 10**9), ("1000", 1000), (42, 42)])
def test_parse_bytes(raw: object, count: int) -> None:
    assert parse_bytes(raw) == count


def test_memory_budget_setting_accepts_sizes() -> None:
    assert load_settings(environ={"SWITCHBOARD_MEMORY_BUDGET": "600MiB"}).memory_budget == (
        600 * MiB
    )
    assert load_settings(environ={}).memory_budget is None
