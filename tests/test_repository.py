"""What the repository itself may hold: source, never build outputs, models or archives."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAGIC = {b"\x7fELF": "ELF binary", b"\x1f\x8b": "gzip archive", b"PK\x03\x04": "zip archive",
         b"GGUF": "GGUF model"}
FORBIDDEN_SUFFIXES = (".gguf", ".gz", ".tgz", ".zip", ".whl", ".so", ".bin", ".safetensors")


def _tracked() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / name for name in out.decode().split("\0") if name]


def test_git_tracks_no_binary_model_or_archive() -> None:
    offenders = []
    for path in _tracked():
        if not path.is_file():
            continue
        with path.open("rb") as f:
            head = f.read(4)
        kind = next((label for magic, label in MAGIC.items() if head.startswith(magic)), None)
        if kind or path.name.endswith(FORBIDDEN_SUFFIXES) or path.stat().st_size > 1_000_000:
            offenders.append(f"{path.relative_to(ROOT)} ({kind or 'suffix/size'})")
    assert offenders == []


def test_build_outputs_are_ignored() -> None:
    payload = ROOT / "runner" / "payloads" / "linux-x86_64" / "cpu" / "llama-server.gz"
    result = subprocess.run(["git", "check-ignore", "-q", str(payload)], cwd=ROOT)
    assert result.returncode == 0, "runner/payloads must stay out of git"


def test_runner_design_map_names_every_runner_module() -> None:
    # runner/DESIGN.md's table is the map a newcomer reads; a module missing from it is a room
    # with no door on the plan.
    table = (ROOT / "runner" / "DESIGN.md").read_text()
    modules = sorted(p.name for p in (ROOT / "runner").glob("*.py") if p.name != "__init__.py")
    assert modules, "no runner modules found"
    assert [name for name in modules if f"`{name}`" not in table] == []
