"""build-runners' progress: ninja's ``[n/m]`` lines (make's ``[ n%]``) become progress as the
compile prints them, the build log stays whole, a failure names that log, and the CLI shows a
bar on a terminal and a line per tenth elsewhere."""

from __future__ import annotations

import io
import logging
import sys
from pathlib import Path

import pytest
from rich.console import Console

from gateway.build_progress import BuildProgress
from runner.build import BuildError, _run, build_step

FAKE_BUILD = """
import sys
for n in (1, 2, 3):
    print(f"[{n}/4] Building CXX object common/part{n}.o", flush=True)
print("ld: something went wrong", flush=True)
sys.exit(2)
"""


def test_build_step_reads_ninja_and_make_progress_lines_only() -> None:
    assert build_step(b"[12/148] Building CXX object ggml/src/ggml.c.o\n") == (12, 148)
    assert build_step(b"[ 45%] Building C object ggml.c.o\n") == (45, 100)
    assert build_step(b"-- Configuring done\n") is None
    assert build_step(b"warning: [1/2] is not at the start\n") is None


def test_a_build_reports_its_steps_keeps_its_log_and_names_it_when_it_fails(
        tmp_path: Path) -> None:
    script = tmp_path / "build.py"
    script.write_text(FAKE_BUILD)
    log_file = tmp_path / "build.log"
    steps: list[tuple[int, int]] = []
    with pytest.raises(BuildError) as failed:
        _run([sys.executable, str(script)], log_file, lambda done, total: steps.append(
            (done, total)))
    assert steps == [(1, 4), (2, 4), (3, 4)]
    text = log_file.read_text()
    assert "[3/4] Building CXX object common/part3.o" in text and "went wrong" in text
    assert f"the whole build log is {log_file}" in str(failed.value)
    assert "ld: something went wrong" in str(failed.value)  # its last lines, too


def test_on_a_terminal_the_progress_is_a_bar_per_variant() -> None:
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=100)
    with BuildProgress(console) as progress:
        for done in range(1, 21):
            progress("cpu_avx2", done, 20)
    assert "compiling cpu_avx2" in screen.getvalue() and "20/20" in screen.getvalue()


def test_elsewhere_the_progress_is_one_log_line_per_tenth(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="runner.build")
    progress = BuildProgress(Console(file=io.StringIO(), force_terminal=False))
    with progress:
        for done in range(1, 41):
            progress("cpu", done, 40)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 10
    assert lines[0] == "cpu: compiled 4 of 40 steps (10%)"
    assert lines[-1] == "cpu: compiled 40 of 40 steps (100%)"
