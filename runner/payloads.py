"""Runner payloads: compiled llama-server binaries shipped gzipped in the package.

At start they are extracted into ``<tmp>/switchboard<random>/runners/<variant>/`` beside a
``switchboard.pid`` naming our pid, so that a later start can tell a dead owner's directory
(sweep it) from a live one (leave it). Tmp cleaners may delete files under a long-running
server; :meth:`Payloads.binary` restores them before each launch.
"""

from __future__ import annotations

import gzip
import logging
import os
import platform
import re
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from runner.errors import RunnerStartError
from runner.variants import SYSTEM_VARIANT

log = logging.getLogger(__name__)

PACKAGE_PAYLOADS = Path(__file__).parent / "payloads"
PID_FILE = "switchboard.pid"
DIR_PREFIX = "switchboard"
BINARY = "llama-server"
# What tempfile.mkdtemp(prefix=DIR_PREFIX) makes: only a dir with such a name and nothing but
# our own entries is ours when it has no pid file to say so (/tmp/switchboard-src is not).
_MKDTEMP_NAME = re.compile(rf"{DIR_PREFIX}[a-z0-9_]{{8}}")
_OWN_ENTRIES = frozenset({PID_FILE, "runners"})
# A dir whose pid file is missing, empty or holds no pid is swept once it is this old. extract()
# writes the pid file a few syscalls after mkdtemp, so a live owner leaves it without a pid
# for microseconds (milliseconds on a stalled disk); a minute is thousands of times that, yet
# short enough that the next start after a crash mid-extraction cleans up. A live server whose
# pid file a tmp cleaner took is not hurt either: its running children keep their unlinked
# binaries, and Payloads.binary() extracts the dir again before its next launch.
STALE_AFTER = 60.0


class PayloadError(RuntimeError):
    """The runners cannot be extracted; the message is one line saying where and why."""


def platform_dir() -> str:
    """``linux-x86_64`` and the like: the payload folder for this machine."""
    return f"{platform.system().lower()}-{platform.machine().lower()}"


def packaged_variants(source: Path = PACKAGE_PAYLOADS) -> dict[str, Path]:
    """Variant name → its gzipped binary, for this platform."""
    base = source / platform_dir()
    if not base.is_dir():
        return {}
    return {
        gz.parent.name: gz
        for gz in sorted(base.glob(f"*/{BINARY}.gz"))
    }


def is_noexec(path: Path) -> bool:
    """Whether binaries under ``path`` cannot be executed (a ``noexec`` mount)."""
    return bool(os.statvfs(path).f_flag & os.ST_NOEXEC)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive, and not ours to judge
    return True


def _read_pid(pid_file: Path) -> int | None:
    """The pid in ``pid_file``; None when it is missing, empty, unreadable or not a pid."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid > 0 else None


def _abandoned(directory: Path, now: float) -> bool:
    """Whether a dir without a usable pid file is old enough, and ours enough, to remove."""
    try:
        info = directory.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            return False  # a symlink, or another user's: not ours to judge
        entries = {entry.name for entry in directory.iterdir()}
        newest = max([info.st_mtime] + [(directory / name).lstat().st_mtime for name in entries])
    except OSError:
        return False  # gone already, or not ours to look into
    if PID_FILE not in entries and not (
        _MKDTEMP_NAME.fullmatch(directory.name) and entries <= _OWN_ENTRIES
    ):
        return False
    return now - newest > STALE_AFTER


def sweep(root: Path) -> list[Path]:
    """Remove ``root/switchboard*/`` dirs whose owner pid is dead, and those with no usable
    pid file once :data:`STALE_AFTER` old; return what was removed."""
    removed: list[Path] = []
    now = time.time()
    for directory in sorted(root.glob(f"{DIR_PREFIX}*")):
        if not directory.is_dir():
            continue
        pid = _read_pid(directory / PID_FILE)
        if pid is None:
            if not _abandoned(directory, now):
                log.debug("sweep: %s has no pid file with a pid, keeping it for now", directory)
                continue
            why = "no usable pid file, untouched for over a minute"
        elif _pid_alive(pid):
            log.debug("sweep: %s belongs to live pid %d, keeping", directory, pid)
            continue
        else:
            why = f"pid {pid} is gone"
        shutil.rmtree(directory, ignore_errors=True)
        if directory.exists():
            log.warning("sweep: could not remove stale %s", directory)
        else:
            log.info("sweep: removed stale runner dir %s (%s)", directory, why)
            removed.append(directory)
    return removed


@dataclass
class Payloads:
    """This process's extracted runners; create with :func:`extract`."""

    root: Path  # the switchboard<random> dir holding the pid file
    sources: dict[str, Path]  # variant -> packaged .gz
    system_binary: Path | None = None
    _sizes: dict[str, int] = field(default_factory=dict)

    @property
    def runners_dir(self) -> Path:
        return self.root / "runners"

    def variants(self) -> list[str]:
        """Packaged variants, then the operator's own llama-server as the last resort."""
        names = list(self.sources)
        if self.system_binary is not None:
            names.append(SYSTEM_VARIANT)
        return names

    def binary(self, variant: str) -> Path:
        """The executable for ``variant``, re-extracted first if a tmp cleaner removed it."""
        if variant == SYSTEM_VARIANT and self.system_binary is not None:
            return self.system_binary
        target = self.runners_dir / variant / BINARY
        expected = self._sizes.get(variant)
        try:
            intact = target.stat().st_size == expected and os.access(target, os.X_OK)
        except OSError:  # missing, or a path part replaced: extracting again says which
            intact = False
        if not intact:
            if expected is not None:
                log.warning("runner %s went missing from %s; extracting it again", variant, target)
            try:
                self._extract_one(variant)
            except OSError as exc:
                # At a launch, long after start: tmp has since filled up or turned read-only.
                # RunnerStartError is what the relay answers with a 503 naming the cause.
                raise RunnerStartError(
                    f"cannot restore runner {variant} into {target.parent}: {_reason(exc)}"
                ) from exc
        return target

    def _extract_one(self, variant: str) -> None:
        source = self.sources[variant]
        directory = self.runners_dir / variant
        directory.mkdir(parents=True, exist_ok=True)
        # Pid file first: a cleaner may have taken the whole tree, and a dir without one
        # would be invisible to the next start's sweep.
        self._write_pid_file()
        partial = directory / f".{BINARY}.partial"
        with gzip.open(source, "rb") as src, partial.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        partial.chmod(0o755)
        # Rename so a concurrent launch never executes a half-written file.
        partial.replace(directory / BINARY)
        self._sizes[variant] = (directory / BINARY).stat().st_size

    def _write_pid_file(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / PID_FILE).write_text(str(os.getpid()))

    def cleanup(self) -> None:
        """Remove the whole extraction dir (clean exit)."""
        shutil.rmtree(self.root, ignore_errors=True)
        log.debug("removed runner dir %s", self.root)


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _tmp_roots(tmpdir: Path | None, home: Path) -> list[Path]:
    first = tmpdir if tmpdir is not None else Path(tempfile.gettempdir())
    return [first, home / "runners"]


def extract(
    tmpdir: Path | None,
    home: Path,
    system_binary: Path | None = None,
    source: Path = PACKAGE_PAYLOADS,
) -> Payloads:
    """Sweep stale dirs, then extract every packaged variant into a fresh pid-owned dir.

    A ``noexec`` tmp (hardened hosts) would make every launch fail with EACCES, so it is
    detected up front and ``$SWITCHBOARD_HOME/runners`` is used instead. Raises
    :class:`PayloadError` when nothing can be extracted, having removed what it made.
    """
    # Refused rather than created: a typo in SWITCHBOARD_TMPDIR would otherwise put runners
    # somewhere nobody looks and leave a directory behind after every exit (Ollama refuses a
    # missing OLLAMA_TMPDIR the same way).
    if tmpdir is not None and not tmpdir.is_dir():
        what = "is not a directory" if tmpdir.exists() else "does not exist"
        raise PayloadError(f"SWITCHBOARD_TMPDIR {tmpdir} {what}")
    roots = _tmp_roots(tmpdir, home)
    for root in roots:
        if root.is_dir():
            sweep(root)
    chosen = None
    for root in roots:
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PayloadError(f"cannot create {root} for runners: {_reason(exc)}") from exc
        if is_noexec(root):
            log.warning(
                "%s is mounted noexec, runners cannot start there; using %s instead "
                "(set SWITCHBOARD_TMPDIR to choose)", root, roots[-1],
            )
            continue
        chosen = root
        break
    if chosen is None:
        raise PayloadError(f"no executable location for runners among {roots}")
    try:
        root = Path(tempfile.mkdtemp(prefix=DIR_PREFIX, dir=chosen))
    except OSError as exc:
        raise PayloadError(f"cannot extract runners into {chosen}: {_reason(exc)} (free space "
                           "there, or set SWITCHBOARD_TMPDIR to another directory)") from exc
    payloads = Payloads(root=root, sources=packaged_variants(source), system_binary=system_binary)
    try:
        payloads._write_pid_file()
        for variant in payloads.sources:
            payloads._extract_one(variant)
    except OSError as exc:
        # Removed here, not left to a later sweep: a dir whose pid file never got its pid
        # would wait out STALE_AFTER, and a full disk would then fail the retry as well.
        payloads.cleanup()
        raise PayloadError(f"cannot extract runners into {chosen}: {_reason(exc)} (free space "
                           "there, or set SWITCHBOARD_TMPDIR to another directory)") from exc
    if payloads.sources:
        log.info("runners extracted to %s: %s", root, ", ".join(payloads.sources))
    elif system_binary is not None:
        log.info("no packaged runners; using system llama-server %s", system_binary)
    else:
        log.warning("no packaged runners and no llama-server on PATH: "
                    "run `switchboard build-runners`")
    return payloads


def find_system_binary(configured: Path | None) -> Path | None:
    """The operator's llama-server: the configured path, else the first on ``PATH``."""
    if configured is not None:
        return configured if configured.is_file() else None
    found = shutil.which(BINARY)
    return Path(found) if found else None
