from __future__ import annotations

import errno
import gzip
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner import payloads as payloads_mod
from runner.errors import RunnerStartError
from runner.payloads import (
    PID_FILE,
    STALE_AFTER,
    PayloadError,
    Payloads,
    extract,
    platform_dir,
    sweep,
)
from runner.variants import order_variants

SCRIPT = b"#!/bin/sh\necho payload-ok\n"


@pytest.fixture
def source(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    for variant in ("cpu", "cpu_avx2"):
        directory = root / platform_dir() / variant
        directory.mkdir(parents=True)
        (directory / "llama-server.gz").write_bytes(gzip.compress(SCRIPT))
    return root


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_extract_writes_pid_file_and_runnable_binaries(source: Path, tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    extracted = extract(tmp, tmp_path / "home", source=source)
    assert (extracted.root / PID_FILE).read_text() == str(os.getpid())
    assert extracted.root.parent == tmp and extracted.root.name.startswith("switchboard")
    for variant in ("cpu", "cpu_avx2"):
        out = subprocess.run([str(extracted.binary(variant))], capture_output=True, check=True)
        assert out.stdout == b"payload-ok\n"


def test_binary_restores_a_file_a_tmp_cleaner_removed(source: Path, tmp_path: Path) -> None:
    extracted = extract(tmp_path, tmp_path / "home", source=source)
    binary = extracted.binary("cpu")
    binary.unlink()
    (extracted.root / PID_FILE).unlink()
    assert extracted.binary("cpu") == binary
    assert subprocess.run([str(binary)], capture_output=True).stdout == b"payload-ok\n"
    assert (extracted.root / PID_FILE).is_file(), "a restored dir must stay sweepable"


def test_binary_restores_a_truncated_file(source: Path, tmp_path: Path) -> None:
    extracted = extract(tmp_path, tmp_path / "home", source=source)
    binary = extracted.binary("cpu")
    binary.write_bytes(b"")
    assert extracted.binary("cpu").read_bytes() == SCRIPT


def test_cleanup_removes_the_whole_dir(source: Path, tmp_path: Path) -> None:
    extracted = extract(tmp_path, tmp_path / "home", source=source)
    extracted.cleanup()
    assert not extracted.root.exists()


def test_sweep_removes_dead_owner_dirs_and_keeps_live_ones(tmp_path: Path) -> None:
    dead = tmp_path / "switchboard_dead"
    live = tmp_path / "switchboard_live"
    garbage = tmp_path / "switchboard_garbage"
    other = tmp_path / "unrelated"
    for directory in (dead, live, garbage, other):
        (directory / "runners").mkdir(parents=True)
    (dead / PID_FILE).write_text(str(_dead_pid()))
    (live / PID_FILE).write_text(str(os.getpid()))
    (garbage / PID_FILE).write_text("not-a-pid")
    (other / PID_FILE).write_text(str(_dead_pid()))
    assert sweep(tmp_path) == [dead]
    assert not dead.exists()
    assert live.exists() and garbage.exists() and other.exists()


def test_extract_sweeps_stale_dirs_first(source: Path, tmp_path: Path) -> None:
    stale = tmp_path / "switchboard_stale"
    stale.mkdir()
    (stale / PID_FILE).write_text(str(_dead_pid()))
    extract(tmp_path, tmp_path / "home", source=source)
    assert not stale.exists()


def test_extract_falls_back_from_a_noexec_tmp(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    tmp = tmp_path / "noexec-tmp"
    tmp.mkdir()
    monkeypatch.setattr(payloads_mod, "is_noexec", lambda path: path == tmp)
    extracted = extract(tmp, tmp_path / "home", source=source)
    assert extracted.root.parent == tmp_path / "home" / "runners"
    assert "noexec" in caplog.text
    assert subprocess.run([str(extracted.binary("cpu"))], capture_output=True).returncode == 0


@pytest.mark.parametrize(("flags", "expected"), [(os.ST_NOEXEC | os.ST_NOSUID, True),
                                                  (os.ST_NOSUID, False)])
def test_is_noexec_reads_the_mount_flags(monkeypatch: pytest.MonkeyPatch, flags: int,
                                         expected: bool) -> None:
    class FakeStat:
        f_flag = flags

    monkeypatch.setattr(os, "statvfs", lambda path: FakeStat())
    assert payloads_mod.is_noexec(Path("/anywhere")) is expected


def test_no_payloads_falls_back_to_a_system_binary(tmp_path: Path) -> None:
    system = tmp_path / "llama-server"
    system.write_bytes(SCRIPT)
    extracted = extract(tmp_path, tmp_path / "home", system_binary=system,
                        source=tmp_path / "empty")
    assert extracted.variants() == ["system"]
    assert order_variants(extracted.variants(), frozenset()) == ["system"]
    assert extracted.binary("system") == system


def _age(directory: Path, seconds: float) -> None:
    """Backdate ``directory`` and everything in it by ``seconds``."""
    then = time.time() - seconds
    for path in [*directory.rglob("*"), directory]:  # the dir last: touching entries moves it
        os.utime(path, (then, then))


def test_sweep_removes_a_dir_whose_pid_file_stayed_empty_past_the_grace(tmp_path: Path) -> None:
    old = tmp_path / "switchboardold_emp"  # a start that died before writing its pid
    fresh = tmp_path / "switchboardnew_emp"  # a start still between mkdtemp and the write
    for directory in (old, fresh):
        directory.mkdir()
        (directory / PID_FILE).write_text("")
    _age(old, STALE_AFTER + 60)
    assert sweep(tmp_path) == [old]
    assert fresh.exists()


def test_sweep_removes_an_old_pidless_dir_only_when_it_looks_like_ours(tmp_path: Path) -> None:
    ours = tmp_path / "switchboardk2j4_x9q"  # mkdtemp's name, nothing but runners/
    someone_elses = tmp_path / "switchboard-src"  # a checkout: not a name mkdtemp makes
    unexpected = tmp_path / "switchboardab12cd34"  # our name, but holding a stranger's file
    for directory in (ours, someone_elses, unexpected):
        (directory / "runners" / "cpu").mkdir(parents=True)
    (unexpected / "notes.txt").write_text("keep me")
    for directory in (ours, someone_elses, unexpected):
        _age(directory, STALE_AFTER + 60)
    assert sweep(tmp_path) == [ours]
    assert someone_elses.exists() and unexpected.exists()


def test_a_failed_extraction_removes_its_dir_and_says_why_in_one_line(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(self: Payloads) -> None:
        (self.root / PID_FILE).touch()  # as a full disk does: the file made, its pid not
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Payloads, "_write_pid_file", full)
    with pytest.raises(PayloadError) as failed:
        extract(tmp_path, tmp_path / "home", source=source)
    assert str(failed.value).startswith(f"cannot extract runners into {tmp_path}: "
                                        "No space left on device")
    assert "\n" not in str(failed.value)
    assert not list(tmp_path.glob("switchboard*"))


def test_a_missing_tmpdir_is_refused_not_created(source: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-tmp"
    with pytest.raises(PayloadError, match=f"^SWITCHBOARD_TMPDIR {missing} does not exist$"):
        extract(missing, tmp_path / "home", source=source)
    assert not missing.exists()


def test_a_runner_that_cannot_be_restored_is_a_start_error(source: Path, tmp_path: Path) -> None:
    extracted = extract(tmp_path, tmp_path / "home", source=source)
    variant_dir = extracted.binary("cpu").parent
    for child in variant_dir.iterdir():
        child.unlink()
    variant_dir.rmdir()
    variant_dir.write_text("")  # mkdir now fails, as on a tmp turned full or read-only
    with pytest.raises(RunnerStartError, match=f"cannot restore runner cpu into {variant_dir}"):
        extracted.binary("cpu")
