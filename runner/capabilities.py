"""What kind of accelerator this machine has, in the gallery's vocabulary.

A meta backend maps capabilities (``nvidia``, ``nvidia-cuda-12``, ``nvidia-cuda-13``, ``amd``,
``intel``, ``metal``, ``default``) to concrete backends; :func:`pick` chooses for this machine,
from the most specific capability to ``default``. Detection order, as LocalAI's: a forced
capability (``SWITCHBOARD_FORCE_CAPABILITY``), NVIDIA through NVML (its CUDA major version from
the driver), AMD and Intel by their device files, Metal on macOS, else ``default``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from runner.memory import gpu_library
from runner.variants import GpuInfo

DEFAULT = "default"
KNOWN = ("nvidia", "nvidia-cuda-12", "nvidia-cuda-13", "amd", "intel", "metal", DEFAULT)
_INTEL_VENDOR = "0x8086"


def detect(
    force: str | None = None,
    gpu: Callable[[], GpuInfo | None] = gpu_library,
    dev: Path = Path("/dev"),
    drm: Path = Path("/sys/class/drm"),
    platform: str = sys.platform,
) -> str:
    """This machine's capability (the probes are parameters so tests can stand in for them)."""
    if force:
        return force
    nvidia = gpu()
    if nvidia is not None and nvidia.library == "cuda":
        major = nvidia.variant.removeprefix("v")
        return f"nvidia-cuda-{major}" if major.isdigit() else "nvidia"
    if (dev / "kfd").exists():
        return "amd"
    for vendor in drm.glob("card*/device/vendor"):
        try:
            if vendor.read_text().strip() == _INTEL_VENDOR:
                return "intel"
        except OSError:
            continue
    if platform == "darwin":
        return "metal"
    return DEFAULT


def candidates(capability: str) -> list[str]:
    """Map keys to try for ``capability``, most specific first: ``nvidia-cuda-12`` also
    matches an ``nvidia`` entry, and everything falls back to ``default``."""
    found = [capability]
    family = capability.split("-", 1)[0]
    if family != capability:
        found.append(family)
    if DEFAULT not in found:
        found.append(DEFAULT)
    return found


def pick(capabilities: Mapping[str, str], capability: str) -> str | None:
    """The backend a meta entry names for this capability, or None if it names none."""
    for key in candidates(capability):
        if key in capabilities:
            return capabilities[key]
    return None
