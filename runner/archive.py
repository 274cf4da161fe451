"""Unpacking backend archives (``.tar.gz``, ``.tgz``, ``.tar``, ``.zip``) without trusting them.

An entry that would land outside the target (an absolute path, ``..``, a link pointing out)
or that is a device file rejects the whole archive. Tar archives use the standard library's
``data`` extraction filter (PEP 706), which resolves links already on disk as it goes; every
member is checked against it before the first byte is written, so a bad archive writes nothing.
Zip has no such filter, so its names, symlinks and file types are checked here, and its unix
permissions (which ``zipfile`` drops) are restored: a backend's binary must stay executable.
"""

from __future__ import annotations

import os
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath


class UnsafeArchiveError(ValueError):
    """The archive has an entry that would escape its directory, or a device file."""


class ArchiveFormatError(ValueError):
    """Not an archive this module can unpack."""


def extract(archive: Path, target: Path) -> None:
    """Unpack ``archive`` into the existing directory ``target``."""
    if zipfile.is_zipfile(archive):
        _extract_zip(archive, target)
    elif tarfile.is_tarfile(archive):
        _extract_tar(archive, target)
    else:
        raise ArchiveFormatError(f"{archive.name} is neither a tar nor a zip archive")


def _extract_tar(archive: Path, target: Path) -> None:
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        for member in members:
            if member.isdev():
                raise UnsafeArchiveError(f"{archive.name}: {member.name} is a device file")
            if member.name.startswith(("/", "\\")):  # the filter would strip it; we refuse
                raise UnsafeArchiveError(f"{archive.name}: {member.name!r} is an absolute path")
            try:
                tarfile.data_filter(member, str(target))
            except tarfile.FilterError as exc:
                raise UnsafeArchiveError(f"{archive.name}: {exc}") from exc
        try:
            tar.extractall(target, members=members, filter="data")
        except tarfile.FilterError as exc:  # a link chain only visible on disk
            raise UnsafeArchiveError(f"{archive.name}: {exc}") from exc


def _inside(target: Path, relative: PurePosixPath) -> bool:
    resolved = os.path.normpath(target / relative)
    return resolved == str(target) or resolved.startswith(str(target) + os.sep)


def _check_zip_name(archive: Path, name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith("\\") or ":" in path.parts[0] or ".." in path.parts:
        raise UnsafeArchiveError(f"{archive.name}: entry {name!r} escapes the target directory")
    return path


def _extract_zip(archive: Path, target: Path) -> None:
    target = target.resolve()
    with zipfile.ZipFile(archive) as zf:
        links: list[tuple[PurePosixPath, str]] = []
        files: list[tuple[zipfile.ZipInfo, PurePosixPath, int]] = []
        for info in zf.infolist():
            path = _check_zip_name(archive, info.filename)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                link = zf.read(info).decode("utf-8", "replace")
                if link.startswith("/") or not _inside(target, path.parent / link):
                    raise UnsafeArchiveError(
                        f"{archive.name}: link {info.filename!r} points outside ({link!r})"
                    )
                links.append((path, link))
            elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) \
                    or stat.S_ISSOCK(mode):
                raise UnsafeArchiveError(f"{archive.name}: {info.filename} is a device file")
            else:
                files.append((info, path, mode))
        for info, path, mode in files:
            destination = target / path
            if info.is_dir():
                destination.mkdir(parents=True, exist_ok=True)
                continue
            destination.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as source, destination.open("wb") as sink:
                while chunk := source.read(1 << 20):
                    sink.write(chunk)
            if mode & 0o111:
                destination.chmod(0o755)
        # Links last: no file is ever written through one (the target starts empty).
        for path, link in links:
            (target / path).parent.mkdir(parents=True, exist_ok=True)
            (target / path).symlink_to(link)
