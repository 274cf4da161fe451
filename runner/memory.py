"""How much memory a runner will need, and how much the machine has.

The estimate follows what llama-server allocates (its startup log lists the same parts):
weights (the tensors, memory-mapped), the KV cache (f16 K and V per layer; sliding-window
layers only keep ``n_swa * parallel + n_ubatch`` cells), the compute graph for one micro-batch,
and the process's own overhead (binary, vocabulary tables, heap). Calibrated on Gemma 3 270M:
at ctx 8192 llama-server reports 235 MiB weights + 39 MiB KV + 27 MiB compute, RSS 355 MiB.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from runner.gguf_header import GGUFInfo
from runner.units import MiB
from runner.variants import GpuInfo

log = logging.getLogger(__name__)
T = TypeVar("T")

N_UBATCH = 512  # llama-server's default micro-batch
KV_BYTES = 2  # f16 cache, llama-server's default type
_BASE_OVERHEAD = 24 * MiB
_PER_TOKEN_OVERHEAD = 64  # vocabulary tables, bytes per token
# Architectures whose GGUF does not record which layers use sliding-window attention:
# every Nth layer is global (llama.cpp's hparams.set_swa_pattern).
_SWA_PATTERN = {"gemma3": 6, "gemma2": 2, "cohere2": 4, "gemma3n": 5}


@dataclass(frozen=True)
class Estimate:
    weights: int
    kv_cache: int
    compute: int
    overhead: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.compute + self.overhead


def _swa_layers(info: GGUFInfo, layers: int) -> int:
    if info.arch_int("attention.sliding_window") <= 0:
        return 0
    pattern = info.arch_int("attention.sliding_window_pattern") or _SWA_PATTERN.get(
        info.architecture, 0
    )
    if pattern <= 1:
        return 0  # unknown pattern: count every layer as global, which over-estimates
    return layers - layers // pattern


def estimate(info: GGUFInfo, ctx_size: int, parallel: int, swa_full: bool = False) -> Estimate:
    """Bytes a CPU runner of this model needs at ``ctx_size`` tokens over ``parallel`` slots
    (``swa_full``: its sliding-window layers keep every cell, llama-server's ``--swa-full``)."""
    layers = info.arch_int("block_count")
    embd = info.arch_int("embedding_length")
    heads = max(info.arch_int("attention.head_count"), 1)
    kv_heads = info.arch_int("attention.head_count_kv") or heads
    head_k = info.arch_int("attention.key_length") or embd // heads
    head_v = info.arch_int("attention.value_length") or embd // heads
    ctx = ctx_size or info.arch_int("context_length") or 4096
    swa = _swa_layers(info, layers)
    swa_cells = ctx if swa_full else min(
        ctx, info.arch_int("attention.sliding_window") * parallel + N_UBATCH)
    per_cell = kv_heads * (head_k + head_v) * KV_BYTES
    kv = ((layers - swa) * ctx + swa * swa_cells) * per_cell
    ff = info.arch_int("feed_forward_length") or 4 * embd
    vocab = int(info.metadata.get("tokenizer.ggml.tokens", 0) or 0)
    compute = N_UBATCH * (3 * ff + 8 * embd) * 4 + 2 * vocab * 4
    overhead = _BASE_OVERHEAD + vocab * _PER_TOKEN_OVERHEAD
    return Estimate(info.tensor_bytes, kv, compute, overhead)


def full_swa_cost(info: GGUFInfo, ctx_size: int, parallel: int) -> int:
    """What ``--swa-full`` adds to a runner's KV cache: 0 for a model without sliding-window
    layers (it gains nothing either)."""
    return (estimate(info, ctx_size, parallel, swa_full=True).kv_cache
            - estimate(info, ctx_size, parallel).kv_cache)


@dataclass(frozen=True)
class GpuMemory:
    index: int
    name: str
    total: int
    free: int


def system_memory(meminfo: Path = Path("/proc/meminfo")) -> tuple[int, int]:
    """(total, available) bytes of RAM."""
    values: dict[str, int] = {}
    try:
        for line in meminfo.read_text().splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts:
                values[key] = int(parts[0]) * 1024
    except OSError:
        return 0, 0
    total = values.get("MemTotal", 0)
    return total, values.get("MemAvailable", values.get("MemFree", total))


def _nvml_call(call: Callable[[Any], T], default: T) -> T:
    """Run ``call(pynvml)`` between init and shutdown; ``default`` without NVML or a GPU."""
    try:
        import pynvml
    except ImportError:
        return default
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return default
    try:
        return call(pynvml)
    except pynvml.NVMLError as exc:
        log.warning("NVML failed, treating this machine as CPU-only: %s", exc)
        return default
    finally:
        pynvml.nvmlShutdown()


def gpus() -> list[GpuMemory]:
    """NVIDIA GPUs and their free memory; empty without NVML or a GPU (never raises)."""

    def read(nvml: Any) -> list[GpuMemory]:
        found = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            info = nvml.nvmlDeviceGetMemoryInfo(handle)
            name = nvml.nvmlDeviceGetName(handle)
            found.append(GpuMemory(index, str(name), int(info.total), int(info.free)))
        return found

    return _nvml_call(read, [])


def gpu_library() -> GpuInfo | None:
    """The runner library these GPUs need, e.g. cuda v12 from the driver's CUDA version."""

    def read(nvml: Any) -> GpuInfo | None:
        if nvml.nvmlDeviceGetCount() == 0:
            return None
        version = int(nvml.nvmlSystemGetCudaDriverVersion())  # e.g. 12040
        return GpuInfo("cuda", f"v{version // 1000}")

    return _nvml_call(read, None)


def gpu_memory_of(pid: int) -> int:
    """Bytes of GPU memory process ``pid`` holds on all GPUs (0 without NVML)."""

    def read(nvml: Any) -> int:
        used = 0
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            for proc in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid == pid and proc.usedGpuMemory:
                    used += int(proc.usedGpuMemory)
        return used

    return _nvml_call(read, 0)
