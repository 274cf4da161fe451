"""The fixes applied to the pinned llama.cpp before it compiles: each matches the pinned source
exactly once, is applied once, and a source it does not match fails the build by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner import source_patches
from runner.build import LLAMA_CPP_PYTHON_SHA256, cache_key, resolve_variants
from runner.source_patches import PatchError, SourcePatch

PATCH = SourcePatch(path="common/x.cpp", old="slow();\n", new="fast();\n", why="a test")
PINNED = Path.home() / ".cache" / "switchboard" / "src" / LLAMA_CPP_PYTHON_SHA256[:16]


def test_a_patch_is_applied_once_and_left_alone_after(tmp_path: Path) -> None:
    (tmp_path / "common").mkdir()
    target = tmp_path / "common" / "x.cpp"
    target.write_text("int main() {\nslow();\n}\n")
    source_patches.apply(tmp_path, (PATCH,))
    assert target.read_text() == "int main() {\nfast();\n}\n"
    target.write_text(target.read_text() + "// edited since\n")
    source_patches.apply(tmp_path, (PATCH,))  # marked: not looked at again
    assert target.read_text().endswith("// edited since\n")


def test_a_source_the_patch_does_not_match_fails_by_name(tmp_path: Path) -> None:
    (tmp_path / "common").mkdir()
    (tmp_path / "common" / "x.cpp").write_text("slow();\nslow();\n")
    with pytest.raises(PatchError, match=r"common/x.cpp: the text to replace \(a test\) occurs 2"):
        source_patches.apply(tmp_path, (PATCH,))


def test_the_patches_are_part_of_every_payloads_cache_key() -> None:
    (variant,) = resolve_variants(["cpu"])
    assert source_patches.digest() != source_patches.digest(())
    assert len(cache_key(variant)) == 24 and source_patches.digest() == source_patches.digest()


def test_every_patch_is_applied_in_the_pinned_source_that_make_built() -> None:
    trees = list(PINNED.glob("llama_cpp_python-*/vendor/llama.cpp"))
    if not trees:
        pytest.skip("the pinned source is not unpacked here: make payloads unpacks it")
    for patch in source_patches.PATCHES:
        text = (trees[0] / patch.path).read_text()
        assert text.count(patch.new) == 1, patch.why


def test_a_tree_patched_by_another_version_of_the_patches_is_told_apart(tmp_path: Path) -> None:
    (tmp_path / "common").mkdir()
    (tmp_path / "common" / "x.cpp").write_text("slow();\n")
    older = SourcePatch(path="common/x.cpp", old="slow();\n", new="quick();\n", why="older")
    source_patches.apply(tmp_path, (older,))
    assert not source_patches.patched_otherwise(tmp_path, (older,))
    assert source_patches.patched_otherwise(tmp_path, (PATCH,))  # unpacked afresh by the build
