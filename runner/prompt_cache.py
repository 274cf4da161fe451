"""Prompt caches that outlive their runner: the slot files llama-server saves as it unloads.

A runner started with ``--slot-save-path`` writes a slot's KV cache and its tokens to a file
on ``POST /slots/{id}?action=save`` and reads one back on ``restore``. This module keeps those
files, one directory per *runner key* (the build, the model file and every flag that shapes
the cache: a file from another model, shape or build is never offered to a runner), within a
disk budget (least recently used go first), and finds the saved cache a new prompt extends.

The token list is read from the file's own header (llama.cpp's ``llama_state_seq_save_file``:
magic, version, a count, then the server's packed tokens), so nothing beside the files needs
to be kept in step with them.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import struct
import uuid
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

SEQ_MAGIC = 0x67677371  # 'ggsq', LLAMA_STATE_SEQ_MAGIC
SEQ_VERSION = 3  # LLAMA_STATE_SEQ_VERSION of the pinned source
_PACKED = -1  # LLAMA_TOKEN_NULL: the server's packed token list follows (else plain tokens)
_PACKED_VERSION = 1  # SERVER_TOKENS_STATE_VERSION
# Fewer tokens than this are cheaper to evaluate again than a file is to keep and match.
MIN_TOKENS = 64
SUFFIX = ".slot"


def read_tokens(path: Path) -> array[int] | None:
    """The tokens of a slot file, or None if it is not one we can restore (another format,
    cut short, or holding images: their chunks are not matched here)."""
    try:
        with path.open("rb") as f:
            head = f.read(12)
            if len(head) < 12:
                return None
            magic, version, count = struct.unpack("<III", head)
            if magic != SEQ_MAGIC or version != SEQ_VERSION:
                return None
            packed = array("i")
            packed.frombytes(f.read(4 * count))
    except (OSError, ValueError):
        return None
    if len(packed) != count:
        return None
    if not packed or packed[0] != _PACKED:
        return packed
    if count < 3 or packed[1] != _PACKED_VERSION:
        return None
    n = packed[2]
    if count < 4 + n or packed[3 + n] != 0:  # media chunks follow: not ours to match
        return None
    return packed[3:3 + n]


def common_prefix(a: array[int], b: Sequence[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share (binary search over byte slices, so the
    comparisons run in C: a long prompt is matched in microseconds)."""
    other = b if isinstance(b, array) else array("i", b)
    left, right = 0, min(len(a), len(other))
    view_a, view_b = memoryview(a), memoryview(other)
    while left < right:
        middle = (left + right + 1) // 2
        if view_a[left:middle] == view_b[left:middle]:
            left = middle
        else:
            right = middle - 1
    return left


@dataclass(eq=False)
class Saved:
    """One slot file: its tokens, size on disk and last use (its mtime)."""

    path: Path
    tokens: array[int]
    size: int
    used: float

    @property
    def name(self) -> str:
        return self.path.name


@dataclass
class PromptCache:
    """The slot files under ``root``, by runner key, within ``budget`` bytes in all."""

    root: Path
    budget: int
    _keys: dict[str, list[Saved]] = field(default_factory=dict)
    _scanned: bool = False

    @property
    def enabled(self) -> bool:
        return self.budget > 0

    def directory(self, key: str) -> Path:
        """Where a runner of ``key`` saves its slots (made now: llama-server checks it)."""
        path = self.root / key
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _scan(self) -> None:
        if self._scanned:
            return
        self._scanned = True
        with contextlib.suppress(OSError):
            for directory in self.root.iterdir():
                if directory.is_dir():
                    for path in directory.glob(f"*{SUFFIX}"):
                        self._index(directory.name, path)
        for saved in self._keys.values():
            saved.sort(key=lambda s: s.used)
        self._enforce()

    def _index(self, key: str, path: Path) -> Saved | None:
        tokens = read_tokens(path)
        try:
            stat = path.stat()
        except OSError:
            return None
        if tokens is None or len(tokens) < MIN_TOKENS:
            _remove(path)
            return None
        saved = Saved(path, tokens, stat.st_size, stat.st_mtime)
        self._keys.setdefault(key, []).append(saved)
        return saved

    def entries(self, key: str) -> list[Saved]:
        """The caches saved for ``key``, least recently used first (file I/O on first use)."""
        self._scan()
        return list(self._keys.get(key, ()))

    def total(self) -> int:
        self._scan()
        return sum(s.size for saved in self._keys.values() for s in saved)

    def best(self, key: str, tokens: Sequence[int]) -> tuple[Saved, int] | None:
        """The saved cache sharing the longest prefix with ``tokens`` (at least
        :data:`MIN_TOKENS` of them), and that length."""
        found: tuple[Saved, int] | None = None
        for saved in self.entries(key):
            shared = common_prefix(saved.tokens, tokens)
            if shared >= MIN_TOKENS and (found is None or shared > found[1]):
                found = (saved, shared)
        return found

    def used(self, saved: Saved) -> None:
        """``saved`` was restored: the last to be dropped now."""
        with contextlib.suppress(OSError):
            os.utime(saved.path)
            saved.used = saved.path.stat().st_mtime
        for entries in self._keys.values():
            if saved in entries:
                entries.remove(saved)
                entries.append(saved)

    @staticmethod
    def new_name() -> str:
        return uuid.uuid4().hex + SUFFIX

    def add(self, key: str, name: str) -> Saved | None:
        """Take in the file a runner of ``key`` just saved as ``name``: kept if it holds enough
        tokens, replacing every cache it extends (a conversation saved again), dropped if a
        cache kept already extends it; then the budget is enforced."""
        self._scan()
        saved = self._index(key, self.root / key / name)
        if saved is None:
            return None
        entries = self._keys[key]
        for other in list(entries):
            if other is saved:
                continue
            shared = common_prefix(other.tokens, saved.tokens)
            if shared == len(other.tokens):  # ``other`` is a prefix of the new one
                self._drop(key, other)
            elif shared == len(saved.tokens):  # the new one adds nothing
                self._drop(key, saved)
                return None
        self._enforce()
        return saved if saved in self._keys.get(key, ()) else None

    def _drop(self, key: str, saved: Saved) -> None:
        entries = self._keys.get(key, [])
        if saved in entries:
            entries.remove(saved)
        if not entries:
            self._keys.pop(key, None)
        _remove(saved.path)

    def _enforce(self) -> None:
        total = sum(s.size for saved in self._keys.values() for s in saved)
        if total <= self.budget:
            return
        everything = sorted(((s.used, key, s) for key, saved in self._keys.items()
                             for s in saved), key=lambda t: t[0])
        for _, key, saved in everything:
            if total <= self.budget:
                break
            total -= saved.size
            self._drop(key, saved)
            log.info("prompt cache: dropped %s (%d tokens) for the disk budget", saved.name,
                     len(saved.tokens))
        with contextlib.suppress(OSError):
            for directory in self.root.iterdir():
                if directory.is_dir() and directory.name not in self._keys:
                    with contextlib.suppress(OSError):
                        directory.rmdir()  # empty only: a runner may be saving into it


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


_BUILDS: dict[tuple[str, int, int], str] = {}


def _file_identity(path: Path) -> str:
    """A binary's digest (cached by path, size and mtime): the same build, extracted again
    at the next start, is the same runner."""
    stat = path.stat()
    marker = (str(path), stat.st_size, stat.st_mtime_ns)
    digest = _BUILDS.get(marker)
    if digest is None:
        with path.open("rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        _BUILDS[marker] = digest
    return digest


def runner_key(binary: Path, parts: Sequence[object], files: Sequence[Path]) -> str:
    """The key of a runner's saved caches: its binary's build, the model files it loads (by
    path, size and mtime: a store's blobs are named by their digest), and ``parts``, every
    other choice that shapes its cache (context, slots, flags)."""
    h = hashlib.sha256(_file_identity(binary).encode())
    for path in files:
        stat = path.stat()
        h.update(f"\0{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    for part in parts:
        h.update(f"\0{part!r}".encode())
    return h.hexdigest()[:32]
