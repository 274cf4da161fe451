from __future__ import annotations

from pathlib import Path

import pytest

from runner.capabilities import candidates, detect, pick
from runner.variants import GpuInfo

META = {"nvidia-cuda-12": "cuda12", "nvidia-cuda-13": "cuda13", "amd": "rocm",
        "intel": "sycl", "metal": "metal", "default": "cpu"}


def _none() -> GpuInfo | None:
    return None


def test_forced_capability_wins_over_any_gpu(tmp_path: Path) -> None:
    assert detect("amd", gpu=lambda: GpuInfo("cuda", "v12"), dev=tmp_path) == "amd"


@pytest.mark.parametrize(("variant", "expected"), [("v12", "nvidia-cuda-12"),
                                                   ("v13", "nvidia-cuda-13"), ("", "nvidia")])
def test_nvidia_capability_carries_the_drivers_cuda_major(
    tmp_path: Path, variant: str, expected: str
) -> None:
    assert detect(None, gpu=lambda: GpuInfo("cuda", variant), dev=tmp_path,
                  drm=tmp_path) == expected


def test_amd_and_intel_are_found_by_their_device_files(tmp_path: Path) -> None:
    (tmp_path / "dev").mkdir()
    card = tmp_path / "drm" / "card0" / "device"
    card.mkdir(parents=True)
    (card / "vendor").write_text("0x8086\n")
    assert detect(None, gpu=_none, dev=tmp_path / "dev", drm=tmp_path / "drm",
                  platform="linux") == "intel"
    (tmp_path / "dev" / "kfd").touch()
    assert detect(None, gpu=_none, dev=tmp_path / "dev", drm=tmp_path / "drm",
                  platform="linux") == "amd"


def test_nothing_found_is_default(tmp_path: Path) -> None:
    assert detect(None, gpu=_none, dev=tmp_path, drm=tmp_path, platform="linux") == "default"
    assert detect(None, gpu=_none, dev=tmp_path, drm=tmp_path, platform="darwin") == "metal"


@pytest.mark.parametrize(("capability", "chosen"), [
    ("nvidia-cuda-12", "cuda12"), ("nvidia-cuda-13", "cuda13"), ("amd", "rocm"),
    ("intel", "sycl"), ("metal", "metal"), ("default", "cpu"),
    ("nvidia-cuda-11", "cpu"),  # no entry for it, nor for plain nvidia: default
])
def test_meta_resolution_for_each_capability(capability: str, chosen: str) -> None:
    assert pick(META, capability) == chosen


def test_a_specific_capability_falls_back_to_its_family_then_default() -> None:
    assert candidates("nvidia-cuda-12") == ["nvidia-cuda-12", "nvidia", "default"]
    assert pick({"nvidia": "any-cuda", "default": "cpu"}, "nvidia-cuda-13") == "any-cuda"
    assert pick({"amd": "rocm"}, "intel") is None
