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
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from runner.variants import SYSTEM_VARIANT

log = logging.getLogger(__name__)

PACKAGE_PAYLOADS = Path(__file__).parent / "payloads"
PID_FILE = "switchboard.pid"
DIR_PREFIX = "switchboard"
BINARY = "llama-server"


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


def sweep(root: Path) -> list[Path]:
    """Remove ``root/switchboard*/`` dirs whose owner pid is dead; return what was removed."""
    removed: list[Path] = []
    for pid_file in sorted(root.glob(f"{DIR_PREFIX}*/{PID_FILE}")):
        directory = pid_file.parent
        try:
            pid = int(pid_file.read_text().strip())
        except OSError as exc:
            log.warning("sweep: cannot read %s, skipping: %s", pid_file, exc)
            continue
        except ValueError:
            log.warning("sweep: %s holds no pid, skipping", pid_file)
            continue
        if pid <= 0:
            log.warning("sweep: %s holds invalid pid %d, skipping", pid_file, pid)
            continue
        if _pid_alive(pid):
            log.debug("sweep: %s belongs to live pid %d, keeping", directory, pid)
            continue
        shutil.rmtree(directory, ignore_errors=True)
        if directory.exists():
            log.warning("sweep: could not remove stale %s", directory)
        else:
            log.info("sweep: removed stale runner dir %s (pid %d is gone)", directory, pid)
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
        except FileNotFoundError:
            intact = False
        if not intact:
            if expected is not None:
                log.warning("runner %s went missing from %s; extracting it again", variant, target)
            self._extract_one(variant)
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
    detected up front and ``$SWITCHBOARD_HOME/runners`` is used instead.
    """
    roots = _tmp_roots(tmpdir, home)
    for root in roots:
        if root.is_dir():
            sweep(root)
    chosen = None
    for root in roots:
        root.mkdir(parents=True, exist_ok=True)
        if is_noexec(root):
            log.warning(
                "%s is mounted noexec, runners cannot start there; using %s instead "
                "(set SWITCHBOARD_TMPDIR to choose)", root, roots[-1],
            )
            continue
        chosen = root
        break
    if chosen is None:
        raise RuntimeError(f"no executable location for runners among {roots}")
    root = Path(tempfile.mkdtemp(prefix=DIR_PREFIX, dir=chosen))
    payloads = Payloads(root=root, sources=packaged_variants(source), system_binary=system_binary)
    payloads._write_pid_file()
    for variant in payloads.sources:
        payloads._extract_one(variant)
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
