from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from runner.variants import GpuInfo, order_variants, read_cpu_flags

AVX2_CPU = frozenset({"sse4_2", "avx", "avx2", "fma", "f16c", "bmi2"})
OLD_CPU = frozenset({"sse4_2", "avx"})
BOTH = ["cpu", "cpu_avx2"]


def test_order_variants_without_avx2_picks_baseline_only() -> None:
    assert order_variants(BOTH, OLD_CPU) == ["cpu"]


def test_order_variants_with_avx2_prefers_avx2_then_baseline() -> None:
    assert order_variants(BOTH, AVX2_CPU) == ["cpu_avx2", "cpu"]


def test_order_variants_missing_variant_falls_to_next_best() -> None:
    assert order_variants(["cpu"], AVX2_CPU) == ["cpu"]


def test_order_variants_never_offers_a_variant_above_the_cpu_flags() -> None:
    # avx2 alone is not enough: the avx2 build also emits FMA and F16C instructions.
    assert order_variants(BOTH, frozenset({"avx", "avx2"})) == ["cpu"]


def test_order_variants_unknown_cpu_variant_is_not_offered() -> None:
    assert order_variants(["cpu", "cpu_amx"], AVX2_CPU) == ["cpu"]


def test_order_variants_gpu_exact_then_alternates_then_cpu() -> None:
    available = ["cpu", "cpu_avx2", "cuda_v11", "cuda_v12"]
    got = order_variants(available, AVX2_CPU, GpuInfo("cuda", "v12"))
    assert got == ["cuda_v12", "cuda_v11", "cpu_avx2", "cpu"]


def test_order_variants_override_wins_only_when_present() -> None:
    assert order_variants(BOTH, AVX2_CPU, override="cpu") == ["cpu"]
    assert order_variants(BOTH, AVX2_CPU, override="rocm") == ["cpu_avx2", "cpu"]


def test_read_cpu_flags_parses_x86_and_arm(tmp_path: Path) -> None:
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nflags\t\t: fpu sse4_2 avx avx2\n\nprocessor\t: 1\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd\n")
    assert read_cpu_flags(x86) == {"fpu", "sse4_2", "avx", "avx2"}
    assert read_cpu_flags(arm) == {"fp", "asimd"}
    assert read_cpu_flags(tmp_path / "missing") == frozenset()


def test_chosen_variant_runs_on_this_machine(real_variants: dict[str, Path],
                                             tmp_path: Path) -> None:
    import gzip
    import shutil

    order = order_variants(real_variants, read_cpu_flags())
    assert order, "no packaged variant is runnable here"
    binary = tmp_path / "llama-server"
    with gzip.open(real_variants[order[0]]) as src, binary.open("wb") as dst:
        shutil.copyfileobj(src, dst)
    binary.chmod(0o755)
    result = subprocess.run([str(binary), "--version"], capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr.decode()[-500:]


@pytest.mark.parametrize("variant", ["cpu", "cpu_avx2"])
def test_default_variants_are_built(real_variants: dict[str, Path], variant: str) -> None:
    assert variant in real_variants


def test_order_variants_system_binary_is_last_resort_or_forced() -> None:
    assert order_variants(["cpu", "system"], AVX2_CPU) == ["cpu", "system"]
    assert order_variants(["cpu", "system"], AVX2_CPU, override="system") == ["system"]


def test_the_banner_explains_the_choice() -> None:
    from runner.variants import explain

    avx2 = frozenset({"avx", "avx2", "fma", "f16c", "bmi2", "sse4_2"})
    assert explain(["cpu_avx2", "cpu"], avx2).startswith("cpu_avx2 (CPU has avx, avx2")
    assert explain(["cpu"], frozenset()) == "cpu (runs on any x86-64 CPU)"
    assert explain(["cuda_v12", "cpu"], frozenset(), GpuInfo("cuda", "v12")) == \
        "cuda_v12 (GPU runtime cuda_v12 found)"
    assert "no payload for GPU runtime cuda_v13" in explain(["cpu"], frozenset(),
                                                            GpuInfo("cuda", "v13"))
    assert explain(["cpu"], avx2, override="cpu") == "cpu (forced by SWITCHBOARD_LLM_LIBRARY)"
    assert explain([], avx2).startswith("none")
