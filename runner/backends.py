"""Installed runner backends: install from a gallery, list, remove, resolve for launching.

Semantics of LocalAI's ``core/gallery/backends.go``:

- A backend is a directory ``$SWITCHBOARD_HOME/backends/<name>/`` holding ``run.sh`` (or a
  ``llama-server`` binary) and ``metadata.json`` (name, alias, meta_backend_for, gallery url,
  installed_at). It is launched exactly like a payload: the same llama-server arguments, port
  and ``LLAMA_API_KEY`` environment, so ``run.sh`` is usually ``exec some-llama-server "$@"``.
- A meta backend installs the concrete backend its capabilities map names for this machine and
  records the link in a directory of its own; removing the meta removes both.
- System backends (``SWITCHBOARD_SYSTEM_BACKENDS``, read-only) and the embedded payload variants
  (``llama-cpp``, a meta over ``cpu``, ``cpu_avx2``, ``cuda_v<N>``) are listed and usable but
  cannot be removed.

Installs are atomic: everything happens in a temporary directory beside the target (fetch,
verify the sha256, unpack, find the entry point, write metadata), then one rename puts it in
place. A failure leaves no trace, and a forced reinstall that fails leaves the old version.
Mirrors are tried in order after the uri fails.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import shutil
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from runner.archive import ArchiveFormatError, UnsafeArchiveError, extract
from runner.capabilities import pick
from runner.download import Downloader, DownloadError, DownloadOptions
from runner.gallery import GalleryEntry, find, is_url
from runner.payloads import packaged_variants
from runner.store import ModelStore
from runner.variants import SYSTEM_VARIANT

log = logging.getLogger(__name__)

METADATA = "metadata.json"
RUN_FILE = "run.sh"
BINARY = "llama-server"
EMBEDDED_META = "llama-cpp"
# Where archives of llama.cpp builds keep the server, in the order looked at.
_ENTRY_POINTS = (RUN_FILE, BINARY, f"bin/{BINARY}", f"build/bin/{BINARY}")


class BackendError(RuntimeError):
    """A backend that cannot be installed, removed or found; the message says why."""


@dataclass(frozen=True)
class Backend:
    name: str
    kind: str  # "installed", "system" or "embedded"
    path: Path  # its directory (the packaged payload for an embedded variant)
    run: Path | None  # what is executed; None for a meta backend
    alias: str | None = None
    meta_for: str | None = None
    metadata: dict[str, object] = field(default_factory=dict)

    @property
    def removable(self) -> bool:
        return self.kind == "installed"


def find_entry_point(root: Path) -> Path | None:
    """``run.sh`` or a ``llama-server`` binary, at the top or one directory down (archives
    often wrap everything in one folder)."""
    tops = [root, *[p for p in sorted(root.iterdir()) if p.is_dir() and not p.is_symlink()]]
    for top in tops:
        for relative in _ENTRY_POINTS:
            candidate = top / relative
            if candidate.is_file():
                return candidate
    return None


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _empty(directory: Path) -> None:
    for child in directory.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class Backends:
    """One machine's backends: those installed under ``root``, the system ones and the
    embedded payload variants."""

    def __init__(
        self,
        root: Path,
        system: Path | None = None,
        embedded: Callable[[], dict[str, Path]] = packaged_variants,
        options: DownloadOptions | None = None,
    ) -> None:
        self.root = root
        self.system = system
        self._embedded = embedded
        self._options = options or DownloadOptions()

    # -- what is there ----------------------------------------------------------------------

    def _read_metadata(self, directory: Path) -> dict[str, object]:
        try:
            loaded = orjson.loads((directory / METADATA).read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return {}
        return loaded if isinstance(loaded, dict) else {}

    def _installed(self) -> list[Backend]:
        found: list[Backend] = []
        if not self.root.is_dir():
            return found
        for directory in sorted(self.root.iterdir()):
            if directory.name.startswith(".") or not directory.is_dir():
                continue
            metadata = self._read_metadata(directory)
            meta_for = metadata.get("meta_backend_for")
            alias = metadata.get("alias")
            run_name = metadata.get("run")
            run = directory / run_name if isinstance(run_name, str) else (
                find_entry_point(directory))
            found.append(Backend(
                name=directory.name,
                kind="installed",
                path=directory,
                run=None if meta_for else run,
                alias=alias if isinstance(alias, str) else None,
                meta_for=meta_for if isinstance(meta_for, str) else None,
                metadata=metadata,
            ))
        return found

    def _system(self) -> list[Backend]:
        if self.system is None or not self.system.is_dir():
            return []
        found = []
        for directory in sorted(self.system.iterdir()):
            run = find_entry_point(directory) if directory.is_dir() else None
            if run is not None:
                found.append(Backend(directory.name, "system", directory, run))
        return found

    def _embedded_backends(self) -> list[Backend]:
        variants = self._embedded()
        found = [Backend(name, "embedded", path, path) for name, path in sorted(variants.items())]
        if variants:
            package = next(iter(variants.values())).parent.parent
            found.insert(0, Backend(EMBEDDED_META, "embedded", package, None,
                                    meta_for=", ".join(sorted(variants))))
        return found

    def all(self) -> list[Backend]:
        """Every backend, embedded first; a system backend shadows an installed namesake."""
        seen: set[str] = set()
        listed: list[Backend] = []
        for backend in (*self._embedded_backends(), *self._system(), *self._installed()):
            if backend.name not in seen:
                seen.add(backend.name)
                listed.append(backend)
        return listed

    def get(self, name: str) -> Backend | None:
        """A backend by name, or by the alias an installed one was given."""
        listed = self.all()
        for backend in listed:
            if backend.name == name:
                return backend
        return next((b for b in listed if b.alias == name), None)

    def is_embedded(self, name: str) -> bool:
        return name in (EMBEDDED_META, SYSTEM_VARIANT) or name in self._embedded()

    def launcher(self, name: str) -> Backend:
        """The concrete backend to execute for ``name`` (a meta resolves to its target)."""
        backend = self.get(name)
        if backend is None:
            raise BackendError(f"backend '{name}' is not installed "
                               f"(switchboard backends install {name})")
        if backend.meta_for and backend.kind == "installed":
            target = self.get(backend.meta_for)
            if target is None or target.run is None:
                raise BackendError(f"backend '{name}' points at '{backend.meta_for}', which is "
                                   f"missing: reinstall it (switchboard backends install {name} "
                                   "--force)")
            return target
        if backend.run is None:
            raise BackendError(f"backend '{name}' has no run.sh or llama-server to execute")
        return backend

    # -- installing -------------------------------------------------------------------------

    async def install(
        self,
        entries: list[GalleryEntry],
        name: str,
        capability: str,
        force: bool = False,
        report: Callable[[str], None] = lambda line: None,
    ) -> Backend:
        """Install ``name`` (or the entry aliased so) from the gallery entries."""
        entry = find(entries, name)
        if entry is None:
            known = ", ".join(sorted(e.name for e in entries)) or "none"
            raise BackendError(f"no backend '{name}' in the galleries (available: {known})")
        existing = self.get(entry.name)
        if existing is not None and not existing.removable:
            raise BackendError(f"'{entry.name}' is a {existing.kind} backend and cannot be "
                               "replaced by an install")
        if existing is not None and not force:
            report(f"{entry.name} is already installed (--force reinstalls it)")
            return existing
        if entry.is_meta:
            target_name = pick(entry.capabilities, capability)
            if target_name is None:
                raise BackendError(
                    f"meta backend '{entry.name}' names no backend for capability "
                    f"'{capability}' and has no 'default' (it maps: "
                    f"{', '.join(f'{k}={v}' for k, v in entry.capabilities.items())})"
                )
            target = find(entries, target_name)
            if target is None or target.is_meta:
                raise BackendError(f"meta backend '{entry.name}' points at '{target_name}', "
                                   "which no gallery lists as a concrete backend")
            report(f"{entry.name}: capability {capability} -> {target.name}")
            await self.install(entries, target.name, capability, force, report)
            return self._commit(entry, None, {
                "meta_backend_for": target.name, "capability": capability,
            })
        staging = self._staging(entry.name)
        try:
            await self._fetch(entry, staging, report)
            run = find_entry_point(staging)
            if run is None:
                raise BackendError(
                    f"backend '{entry.name}' has no {RUN_FILE} or {BINARY} (looked for "
                    f"{', '.join(_ENTRY_POINTS)}, also one directory down)"
                )
            run.chmod(run.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
            return self._commit(entry, staging, {
                "run": str(run.relative_to(staging)), "uri": entry.uri, "sha256": entry.sha256,
            })
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _staging(self, name: str) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".install-{name}-", dir=self.root))

    async def _fetch(self, entry: GalleryEntry, staging: Path,
                     report: Callable[[str], None]) -> None:
        """The uri, else each mirror in turn, unpacked into ``staging``."""
        errors: list[str] = []
        for location in entry.locations():
            try:
                report(f"{entry.name}: fetching {location}")
                await self._fetch_one(entry, location, staging)
                return
            except (DownloadError, OSError, BackendError, ArchiveFormatError) as exc:
                errors.append(f"{location}: {exc}")
                log.info("backend %s: %s failed (%s); trying the next location", entry.name,
                         location, exc)
                await asyncio.to_thread(_empty, staging)  # a half-unpacked try must not mix in
            except UnsafeArchiveError as exc:
                raise BackendError(f"backend '{entry.name}': refusing {location}: {exc}") from exc
        raise BackendError(f"backend '{entry.name}' could not be fetched: " + "; ".join(errors))

    async def _fetch_one(self, entry: GalleryEntry, location: str, staging: Path) -> None:
        if is_url(location):
            if entry.sha256 is None:
                raise BackendError("a sha256 is required to install from a URL")
            archive = await self._download(location, entry.sha256)
            try:
                await asyncio.to_thread(self._unpack, archive, staging)
            finally:
                archive.unlink(missing_ok=True)
            return
        # Copying, hashing and unpacking are file work: off the event loop.
        await asyncio.to_thread(self._place_local, entry, Path(location), staging)

    def _place_local(self, entry: GalleryEntry, source: Path, staging: Path) -> None:
        if source.is_dir():
            if entry.sha256 is not None:
                raise BackendError("a sha256 cannot check a directory; remove it or use an "
                                   "archive")
            shutil.copytree(source, staging, symlinks=True, dirs_exist_ok=True)
            return
        if not source.is_file():
            raise BackendError(f"{source} does not exist")
        if entry.sha256 is not None and _sha256(source) != entry.sha256:
            raise BackendError(f"sha256 mismatch for {source}")
        self._unpack(source, staging)

    async def _download(self, url: str, sha256: str) -> Path:
        # The model store's downloader, over a scratch store: parallel, resumable, verified.
        cache = ModelStore(self.root / ".downloads", "local")
        downloader = Downloader(cache, self._options)
        digest = "sha256:" + sha256
        try:
            await downloader.fetch(digest, url)
        finally:
            await downloader.aclose()
        return cache.blob_path(digest)

    def _unpack(self, archive: Path, staging: Path) -> None:
        with archive.open("rb") as f:
            head = f.read(4)
        if head == b"\x7fELF":  # a bare llama-server binary
            shutil.copyfile(archive, staging / BINARY)
            (staging / BINARY).chmod(0o755)
            return
        extract(archive, staging)

    def _commit(self, entry: GalleryEntry, staging: Path | None,
                extra: dict[str, object | None]) -> Backend:
        """Write metadata and rename into place, replacing an older install only at the end."""
        if staging is None:
            staging = self._staging(entry.name)
        metadata = {
            "name": entry.name, "alias": entry.alias, "meta_backend_for": None,
            "gallery_url": entry.gallery, "installed_at": _now(), **extra,
        }
        (staging / METADATA).write_bytes(orjson.dumps(metadata, option=orjson.OPT_INDENT_2))
        target = self.root / entry.name
        old: Path | None = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".old-{entry.name}-", dir=self.root))
            target.rename(old / "backend")
        try:
            staging.rename(target)
        except OSError:
            if old is not None:
                (old / "backend").rename(target)  # put the old version back
            raise
        finally:
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        installed = self.get(entry.name)
        assert installed is not None
        return installed

    # -- removing ---------------------------------------------------------------------------

    def remove(self, name: str) -> list[str]:
        """Remove an installed backend (by name or alias) and, for a meta, its target."""
        backend = self.get(name)
        if backend is None:
            raise BackendError(f"backend '{name}' is not installed")
        if not backend.removable:
            raise BackendError(f"'{backend.name}' is a {backend.kind} backend and cannot be "
                               "removed")
        removed = [backend.name]
        if backend.meta_for:
            target = self.get(backend.meta_for)
            if target is not None and target.removable:
                self._delete(target.path)
                removed.append(target.name)
        self._delete(backend.path)
        return removed

    def _delete(self, directory: Path) -> None:
        # Renamed away first, so a crash mid-delete never leaves a half backend under its name.
        trash = Path(tempfile.mkdtemp(prefix=".trash-", dir=self.root))
        directory.rename(trash / directory.name)
        shutil.rmtree(trash, ignore_errors=True)

