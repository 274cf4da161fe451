"""Which runner variant this machine should launch, best first.

Variant names follow Ollama's convention: ``<library>[_<variant>]`` (``cpu``, ``cpu_avx2``,
``cuda_v12``). A name without a suffix is its library's lowest common denominator. Launching a
CPU variant whose instructions the processor lacks dies with SIGILL, so a CPU variant is only
ever offered when every flag it was compiled for is present.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

SYSTEM_VARIANT = "system"

# Flags each CPU variant's build enables (runner.build keeps the compiler side in step).
CPU_REQUIREMENTS: dict[str, frozenset[str]] = {
    "cpu": frozenset(),
    "cpu_avx2": frozenset({"avx", "avx2", "fma", "f16c", "bmi2", "sse4_2"}),
    "cpu_avx512": frozenset({"avx", "avx2", "fma", "f16c", "bmi2", "sse4_2", "avx512f"}),
}


@dataclass(frozen=True)
class GpuInfo:
    """The GPU runtime a variant must match, e.g. library "cuda" and variant "v12"."""

    library: str
    variant: str = ""

    @property
    def requested(self) -> str:
        return f"{self.library}_{self.variant}" if self.variant else self.library


def read_cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The instruction-set flags of the first processor (x86 'flags', Arm 'Features')."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def runnable_cpu_variants(available: Iterable[str], flags: frozenset[str]) -> list[str]:
    """CPU variants this processor can execute, most capable first."""
    usable = [
        name
        for name in available
        if name in CPU_REQUIREMENTS and CPU_REQUIREMENTS[name] <= flags
    ]
    return sorted(usable, key=lambda name: len(CPU_REQUIREMENTS[name]), reverse=True)


def order_variants(
    available: Iterable[str],
    cpu_flags: frozenset[str],
    gpu: GpuInfo | None = None,
    override: str | None = None,
) -> list[str]:
    """Variants to try, best first: exact GPU match, its alternates, then the best CPU one.

    ``override`` (SWITCHBOARD_LLM_LIBRARY) wins when that variant exists; an override naming a
    missing variant is ignored rather than failing every launch.
    """
    names = sorted(set(available))
    if override and override in names:
        return [override]
    ordered: list[str] = []
    if gpu is not None and gpu.library != "cpu":
        if gpu.requested in names:
            ordered.append(gpu.requested)
        ordered += [
            name
            for name in names
            if name.split("_")[0] == gpu.library and name != gpu.requested
        ]
    ordered += runnable_cpu_variants(names, cpu_flags)
    if SYSTEM_VARIANT in names:
        ordered.append(SYSTEM_VARIANT)  # built for this machine by its operator: try it last
    return ordered


def explain(
    ordered: list[str],
    cpu_flags: frozenset[str],
    gpu: GpuInfo | None = None,
    override: str | None = None,
) -> str:
    """Why ``ordered[0]`` was chosen, in a line for the start-up banner."""
    if not ordered:
        return "none: no payload runs here (switchboard build-runners, or SWITCHBOARD_LLAMA_SERVER)"
    chosen = ordered[0]
    if override and chosen == override:
        return f"{chosen} (forced by SWITCHBOARD_LLM_LIBRARY)"
    if gpu is not None and chosen.split("_")[0] == gpu.library:
        return f"{chosen} (GPU runtime {gpu.requested} found)"
    gpu_note = f"no payload for GPU runtime {gpu.requested}; " if gpu is not None else ""
    if chosen in CPU_REQUIREMENTS:
        needs = sorted(CPU_REQUIREMENTS[chosen])
        why = f"CPU has {', '.join(needs)}" if needs else "runs on any x86-64 CPU"
        return f"{chosen} ({gpu_note}{why})"
    return f"{chosen} ({gpu_note}the best of {', '.join(ordered)})"
