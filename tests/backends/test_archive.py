"""Unpacking archives from galleries: whatever they contain, nothing lands outside."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from runner.archive import ArchiveFormatError, UnsafeArchiveError, extract


def _tar(path: Path, *members: tuple[tarfile.TarInfo, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return path


def _file(name: str, mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode = mode
    return info


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


@pytest.fixture
def sandbox(tmp_path: Path) -> tuple[Path, Path]:
    """(target, its parent): the parent is where an escape would land."""
    target = tmp_path / "out" / "target"
    target.mkdir(parents=True)
    return target, tmp_path / "out"


def _untouched(sandbox: tuple[Path, Path]) -> None:
    target, parent = sandbox
    assert [p.name for p in parent.iterdir()] == ["target"]
    assert list(target.iterdir()) == []


def test_a_good_archive_keeps_its_links_and_executables(tmp_path: Path,
                                                        sandbox: tuple[Path, Path]) -> None:
    archive = _tar(tmp_path / "ok.tar.gz",
                   (_file("pkg/bin/llama-server", 0o755), b"\x7fELF..."),
                   (_file("pkg/lib/libggml.so.1"), b"lib"),
                   (_link("pkg/lib/libggml.so", "libggml.so.1"), b""))
    target, _ = sandbox
    extract(archive, target)
    binary = target / "pkg" / "bin" / "llama-server"
    assert binary.read_bytes() == b"\x7fELF..." and binary.stat().st_mode & stat.S_IXUSR
    assert (target / "pkg" / "lib" / "libggml.so").resolve().name == "libggml.so.1"


@pytest.mark.parametrize("members", [
    [(_file("../escaped"), b"x")],
    [(_file("/tmp/absolute-escape"), b"x")],
    [(_file("ok"), b"fine"), (_file("a/../../escaped"), b"x")],
    [(_link("up", "/etc"), b"")],
    [(_link("up", "../.."), b"")],
    [(_link("hard", "../../etc/passwd", tarfile.LNKTYPE), b"")],
    [(_link("ok", "."), b""), (_link("ok/deeper", "../../outside"), b"")],
])
def test_entries_that_escape_are_rejected_and_nothing_is_written(
    tmp_path: Path, sandbox: tuple[Path, Path], members: list[tuple[tarfile.TarInfo, bytes]]
) -> None:
    archive = _tar(tmp_path / "evil.tar.gz", *members)
    with pytest.raises(UnsafeArchiveError):
        extract(archive, sandbox[0])
    _untouched(sandbox)
    assert not (tmp_path / "escaped").exists()


def test_device_files_are_rejected(tmp_path: Path, sandbox: tuple[Path, Path]) -> None:
    device = tarfile.TarInfo("dev/null")
    device.type = tarfile.CHRTYPE
    device.devmajor, device.devminor = 1, 3
    with pytest.raises(UnsafeArchiveError, match="device"):
        extract(_tar(tmp_path / "dev.tar.gz", (device, b"")), sandbox[0])
    _untouched(sandbox)


def _zip(path: Path, *entries: tuple[str, bytes, int]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data, mode in entries:
            info = zipfile.ZipInfo(name)
            info.external_attr = mode << 16
            zf.writestr(info, data)
    return path


def test_zip_executables_stay_executable_and_inner_links_work(
    tmp_path: Path, sandbox: tuple[Path, Path]
) -> None:
    archive = _zip(tmp_path / "ok.zip",
                   ("build/bin/llama-server", b"\x7fELF", stat.S_IFREG | 0o755),
                   ("build/bin/libllama.so.0", b"lib", stat.S_IFREG | 0o644),
                   ("build/bin/libllama.so", b"libllama.so.0", stat.S_IFLNK | 0o777))
    target, _ = sandbox
    extract(archive, target)
    assert (target / "build/bin/llama-server").stat().st_mode & stat.S_IXUSR
    assert (target / "build/bin/libllama.so").read_bytes() == b"lib"


@pytest.mark.parametrize("entries", [
    [("../escaped", b"x", stat.S_IFREG | 0o644)],
    [("/abs/escaped", b"x", stat.S_IFREG | 0o644)],
    [("ok/../../escaped", b"x", stat.S_IFREG | 0o644)],
    [("link", b"/etc", stat.S_IFLNK | 0o777)],
    [("a/link", b"../../outside", stat.S_IFLNK | 0o777)],
    [("fifo", b"", stat.S_IFIFO | 0o644)],
])
def test_zip_entries_that_escape_are_rejected_and_nothing_is_written(
    tmp_path: Path, sandbox: tuple[Path, Path], entries: list[tuple[str, bytes, int]]
) -> None:
    with pytest.raises(UnsafeArchiveError):
        extract(_zip(tmp_path / "evil.zip", *entries), sandbox[0])
    _untouched(sandbox)


def test_something_else_is_not_an_archive(tmp_path: Path, sandbox: tuple[Path, Path]) -> None:
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not an archive at all")
    with pytest.raises(ArchiveFormatError):
        extract(junk, sandbox[0])
