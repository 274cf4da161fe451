"""The blob downloader: parallel ranged GETs, resumable, hashed while it downloads.

Semantics of Ollama's ``server/download.go``, with what hurts its users fixed:

- HEAD (following a bounded number of redirects, each host checked against the allowed list)
  gives the size and the direct URL; the blob is split into about ``parts`` parts of bounded
  size, fetched by ``concurrency`` workers with ranged GETs into one preallocated file.
- Each part's progress (not only "done") is checkpointed beside the partial file, so a pull
  killed at 50% resumes at 50%, mid-part included; Ollama restarts every unfinished part.
- sha256 runs alongside the download, reading back what is on disk in order as far as the bytes
  are contiguous (mid-part too), so verifying at the end costs only the last chunk. Memory stays
  constant: a read buffer, never the blob.
- A part that gets no bytes for ``stall_timeout`` reconnects from where it stopped. A worker
  with no part left splits the biggest remaining one in two, so a slow connection near the end
  is shared instead of being waited for ("stuck at 99%").
- Failures retry with exponential backoff and jitter; an attempt that made progress does not
  count against the retry limit. A full disk and cancellation stop at once, keeping the partial.
- The digest is verified before an atomic rename into ``blobs/``; a mismatch removes the partial.
- In one process, pulls of one blob share one download (cancelled when its last waiter leaves);
  across processes an exclusive ``flock`` on the partial serialises them.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fnmatch
import hashlib
import logging
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import orjson

from runner.locks import exclusive
from runner.settings import Settings
from runner.store import ModelStore
from runner.units import format_bytes

log = logging.getLogger(__name__)

MIN_PART = 1 << 20  # smaller parts cost more in requests than they win in parallelism
MAX_PART = 1 << 30  # bounds a part's share of the work; stealing handles slow tails
MIN_SPLIT = 4 << 20  # a part with less left is not worth a second connection
HASH_CHUNK = 4 << 20
CHECKPOINT_INTERVAL = 0.5  # seconds of progress a kill can lose
MAX_BACKOFF = 30.0
STATE_VERSION = 1
_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class DownloadError(RuntimeError):
    """A download that failed for good; the message says why."""


class DigestMismatchError(DownloadError):
    """The bytes do not hash to the digest asked for; the partial was removed."""


class DiskFullError(DownloadError):
    """No room to write; the partial is kept for a later resume."""


class HostNotAllowedError(DownloadError):
    """A URL or redirect points at a host outside ``pull_allowed_hosts``."""


class _Retryable(Exception):
    """An attempt failed in a way another attempt may not."""


def parse_mirrors(pairs: tuple[str, ...]) -> dict[str, str]:
    """``HOST=URL`` pairs as a map; raises ValueError naming a pair that is not one."""
    mirrors: dict[str, str] = {}
    for pair in pairs:
        host, _, url = pair.partition("=")
        if not host or not url.startswith(("http://", "https://")):
            raise ValueError(f"registry mirror {pair!r} is not HOST=http(s)://…")
        mirrors[host.strip().lower()] = url.strip().rstrip("/")
    return mirrors


@dataclass(frozen=True)
class DownloadOptions:
    parts: int = 16
    concurrency: int = 8
    stall_timeout: float = 10.0
    retries: int = 6
    backoff: float = 0.5
    allowed_hosts: tuple[str, ...] = ()
    max_redirects: int = 10
    mirrors: dict[str, str] = field(default_factory=dict)  # registry host -> base URL

    @classmethod
    def from_settings(cls, settings: Settings) -> DownloadOptions:
        return cls(
            parts=settings.pull_parts,
            concurrency=settings.pull_concurrency,
            stall_timeout=settings.pull_stall_timeout,
            retries=settings.pull_retries,
            backoff=settings.pull_backoff,
            allowed_hosts=settings.pull_allowed_hosts,
            mirrors=parse_mirrors(settings.registry_mirrors),
        )

    def check_host(self, url: str) -> None:
        host = (urlsplit(url).hostname or "").lower()
        if self.allowed_hosts and not any(fnmatch.fnmatchcase(host, pattern.lower())
                                          for pattern in self.allowed_hosts):
            raise HostNotAllowedError(
                f"host {host!r} is not in pull_allowed_hosts ({', '.join(self.allowed_hosts)})"
            )

    def delay(self, failures: int) -> float:
        """Exponential backoff with jitter, so retrying clients do not arrive in step."""
        base = min(self.backoff * 2 ** (failures - 1), MAX_BACKOFF)
        return float(base * random.uniform(0.5, 1.5))


@dataclass(frozen=True)
class Located:
    url: str  # after redirects: where the ranged GETs go
    size: int
    ranges: bool
    headers: Mapping[str, str] = field(default_factory=dict)  # credentials, for that host only


@dataclass
class Part:
    offset: int
    size: int
    completed: int = 0
    active: bool = False

    @property
    def end(self) -> int:
        return self.offset + self.size

    @property
    def remaining(self) -> int:
        return self.size - self.completed


@dataclass(frozen=True)
class Progress:
    digest: str
    total: int
    completed: int
    status: str


def plan_parts(total: int, parts: int) -> list[Part]:
    """About ``parts`` parts, each between MIN_PART and MAX_PART bytes."""
    size = min(max(-(-total // max(parts, 1)), MIN_PART), MAX_PART)
    return [Part(offset, min(size, total - offset)) for offset in range(0, total, size)] or [
        Part(0, 0)
    ]


def _is_disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


async def locate(
    client: httpx.AsyncClient,
    url: str,
    options: DownloadOptions,
    headers: Mapping[str, str] | None = None,
) -> Located:
    """The final URL, size and range support of ``url``. httpx follows the redirects (bounded
    by the client's ``max_redirects``; it drops credentials when the host changes), and the
    client's request hook checks every hop's host."""
    failures = 0
    while True:
        try:
            response = await client.head(url, headers=headers, follow_redirects=True)
            if response.status_code in (403, 405, 501):
                # Some stores sign URLs for GET only: ask for one byte instead.
                response = await client.get(url, headers={**(headers or {}), "Range": "bytes=0-0"},
                                            follow_redirects=True)
        except httpx.TooManyRedirects as exc:
            raise DownloadError(f"more than {options.max_redirects} redirects from "
                                f"{_where(url)}") from exc
        except httpx.TransportError as exc:
            failures += 1
            if failures > options.retries:
                raise DownloadError(f"cannot reach {_where(url)}: {exc!r}") from exc
            await asyncio.sleep(options.delay(failures))
            continue
        final = str(response.url)
        same_host = urlsplit(final).netloc == urlsplit(url).netloc
        keep = dict(headers or {}) if same_host else {}
        if response.status_code in _RETRY_STATUS:
            failures += 1
            if failures > options.retries:
                raise DownloadError(f"{_where(final)} answered {response.status_code}")
            await asyncio.sleep(options.delay(failures))
            continue
        if response.status_code == 206:
            total = response.headers.get("content-range", "").rpartition("/")[2]
            if total.isdigit():
                return Located(final, int(total), True, keep)
        if response.status_code == 200 and "content-length" in response.headers:
            ranges = response.headers.get("accept-ranges", "").lower() == "bytes"
            return Located(final, int(response.headers["content-length"]), ranges, keep)
        if response.status_code == 404:
            raise DownloadError(f"not found: {_where(final)}")
        raise DownloadError(f"{_where(final)} answered {response.status_code} "
                            "without a usable size")


def client_for(options: DownloadOptions) -> httpx.AsyncClient:
    """The HTTP client for registries and downloads: redirects bounded, every request's host
    checked against ``pull_allowed_hosts`` (redirect hops included)."""

    async def check(request: httpx.Request) -> None:
        options.check_host(str(request.url))

    return httpx.AsyncClient(
        follow_redirects=False,
        max_redirects=options.max_redirects,
        timeout=httpx.Timeout(30.0, read=options.stall_timeout),
        limits=httpx.Limits(max_connections=options.concurrency * 2 + 4),
        event_hooks={"request": [check]},
    )


def _where(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"  # never a signed query string


@dataclass(eq=False)
class BlobDownload:
    """One blob being fetched into the store; waiters read its progress."""

    store: ModelStore
    digest: str
    url: str
    expected_size: int | None
    headers: Mapping[str, str]
    client: httpx.AsyncClient
    options: DownloadOptions
    total: int = 0
    completed: int = 0
    hashed: int = 0
    status: str = ""
    received: int = 0  # bytes over the network in this run (resume leaves the rest out)
    started_at: float = 0.0  # monotonic: transfer start, last byte written, blob in place
    last_byte_at: float = 0.0
    verified_at: float = 0.0
    finished_at: float = 0.0
    parts: list[Part] = field(default_factory=list)
    _fd: int = -1
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)
    _dirty: bool = False

    def __post_init__(self) -> None:
        self.status = f"pulling {self.short}"
        self.total = self.expected_size or 0

    @property
    def short(self) -> str:
        return self.digest[7:19]

    def progress(self) -> Progress:
        return Progress(self.digest, self.total, self.completed, self.status)

    # -- state beside the partial ----------------------------------------------------------

    @property
    def _partial(self) -> Path:
        return self.store.partial_path(self.digest)

    @property
    def _state(self) -> Path:
        return self._partial.with_suffix(".json")

    @property
    def _lock(self) -> Path:
        return self._partial.with_suffix(".lock")

    def _load_state(self, located: Located) -> list[Part] | None:
        try:
            state = orjson.loads(self._state.read_bytes())
            if (state.get("version") != STATE_VERSION or state.get("digest") != self.digest
                    or state.get("total") != located.size or not self._partial.is_file()):
                return None
            parts = [Part(int(o), int(s), int(c)) for o, s, c in state["parts"]]
        except (OSError, ValueError, TypeError, KeyError, orjson.JSONDecodeError):
            return None
        # The parts must tile the file exactly, or the state is not ours to trust.
        position = 0
        for part in parts:
            if part.offset != position or not 0 <= part.completed <= part.size:
                return None
            position = part.end
        if position != located.size:
            return None
        if not located.ranges:
            for part in parts:
                part.completed = 0  # cannot ask for the rest: start over
        return parts

    def _checkpoint(self) -> None:
        """Record progress; only bytes already written are ever recorded as done."""
        state = {
            "version": STATE_VERSION,
            "digest": self.digest,
            "total": self.total,
            "parts": [[p.offset, p.size, p.completed] for p in self.parts],
        }
        tmp = self._state.with_suffix(".json.tmp")
        tmp.write_bytes(orjson.dumps(state))
        tmp.replace(self._state)
        self._dirty = False

    async def _checkpoints(self) -> None:
        while True:
            await asyncio.sleep(CHECKPOINT_INTERVAL)
            if self._dirty:
                self._checkpoint()

    # -- running ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Fetch, verify and store the blob; raises :class:`DownloadError` subclasses."""
        self.store.partial_dir.mkdir(parents=True, exist_ok=True)
        self.store.blobs_dir.mkdir(parents=True, exist_ok=True)

        def waiting() -> None:
            self.status = f"waiting for another process pulling {self.short}"

        async with exclusive(self._lock, on_wait=waiting):
            if self.store.has_blob(self.digest, self.expected_size):
                self.total = self.completed = self.hashed = self.blob_size()
                return  # the other process finished it
            self.status = f"pulling {self.short}"
            await self._run_locked()
        with contextlib.suppress(OSError):
            # Only after success: a failed pull keeps its lock file so no second process can
            # lock a fresh inode while another still waits on the old one.
            self._lock.unlink()

    def blob_size(self) -> int:
        return self.store.blob_path(self.digest).stat().st_size

    async def _run_locked(self) -> None:
        located = await locate(self.client, self.url, self.options, self.headers)
        if self.expected_size is not None and located.size != self.expected_size:
            raise DownloadError(
                f"blob {self.short} should be {self.expected_size} bytes but "
                f"{_where(located.url)} has {located.size}"
            )
        self.total = located.size
        resumed = self._load_state(located)
        self.parts = resumed or (
            plan_parts(self.total, self.options.parts if located.ranges else 1)
        )
        self.completed = sum(p.completed for p in self.parts)
        if resumed and self.completed:
            log.info("resuming %s at %s of %s", self.short, format_bytes(self.completed),
                     format_bytes(self.total))
        else:
            log.info("downloading %s: %s in %d part(s)", self.short, format_bytes(self.total),
                     len(self.parts))
        self._fd = os.open(self._partial, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            self._preallocate()
            self._checkpoint()
            self.started_at = time.monotonic()
            await self._transfer(located)
            # blobs/ is trusted without rehashing: its bytes must be on disk before the rename
            # makes them a blob, or a power cut could leave a verified name on torn content.
            await asyncio.to_thread(os.fsync, self._fd)
            log.info("downloaded %s: %s received in %.1fs", self.short,
                     format_bytes(self.received), time.monotonic() - self.started_at)
        finally:
            if self._dirty:
                self._checkpoint()
            os.close(self._fd)
            self._fd = -1
        self._state.unlink(missing_ok=True)
        self._partial.replace(self.store.blob_path(self.digest))
        self.finished_at = time.monotonic()

    def _preallocate(self) -> None:
        """Reserve the whole size now: a disk that cannot hold the blob fails at once, not at
        90%, and the parallel writes do not fragment the file."""
        try:
            os.posix_fallocate(self._fd, 0, max(self.total, 1))
        except OSError as exc:
            if _is_disk_full(exc):
                raise self._disk_full(exc) from exc
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise

    def _disk_full(self, exc: OSError) -> DiskFullError:
        try:
            free = format_bytes(os.statvfs(self._partial.parent).f_bavail
                                * os.statvfs(self._partial.parent).f_frsize)
        except OSError:
            free = "unknown"
        return DiskFullError(
            f"no space left on {self._partial.parent} for blob {self.short} "
            f"({format_bytes(self.total - self.completed)} still to write, {free} free): "
            f"{exc.strerror}; the partial download is kept and the next pull resumes it"
        )

    async def _transfer(self, located: Located) -> None:
        hasher = asyncio.create_task(self._hash())
        checkpoints = asyncio.create_task(self._checkpoints())
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(min(self.options.concurrency, max(len(self.parts), 1))):
                    group.create_task(self._worker(located))
            digest = await hasher  # by now, at most the last chunk is left to hash
            self.verified_at = time.monotonic()
        except BaseExceptionGroup as group_error:
            raise _first(group_error) from None
        finally:
            checkpoints.cancel()
            hasher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await hasher
        if digest != self.digest:
            self._discard()
            raise DigestMismatchError(
                f"digest mismatch for blob {self.short}: got {digest}, expected {self.digest}; "
                "the download was removed"
            )

    def _discard(self) -> None:
        self.parts = []
        self._dirty = False
        self._state.unlink(missing_ok=True)
        self._partial.unlink(missing_ok=True)

    async def _hash(self) -> str:
        """sha256 of the file in order, as far as the bytes on disk are contiguous."""
        digest = hashlib.sha256()
        position = 0
        while position < self.total:
            frontier = self._frontier()
            if frontier <= position:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            length = min(frontier - position, HASH_CHUNK)
            # hashlib drops the GIL on large buffers: this thread overlaps the network.
            await asyncio.to_thread(self._hash_range, digest, position, length)
            position += length
            self.hashed = position
        return "sha256:" + digest.hexdigest()

    def _hash_range(self, digest: hashlib._Hash, offset: int, length: int) -> None:
        while length > 0:
            data = os.pread(self._fd, min(length, 1 << 20), offset)
            if not data:
                raise DownloadError(f"partial file of {self.short} is shorter than recorded")
            digest.update(data)
            offset += len(data)
            length -= len(data)

    def _frontier(self) -> int:
        """Bytes from the start that are all on disk."""
        position = 0
        for part in self.parts:
            position = part.offset + part.completed
            if part.completed < part.size:
                break
        return position

    def _next_part(self) -> Part | None:
        for part in self.parts:
            if not part.active and part.remaining > 0:
                return part
        # Nothing unclaimed: take the back half of the part with the most left.
        busy = [p for p in self.parts if p.active]
        if not busy:
            return None
        biggest = max(busy, key=lambda p: p.remaining)
        if biggest.remaining < 2 * MIN_SPLIT:
            return None
        cut = biggest.offset + biggest.completed + biggest.remaining // 2
        tail = Part(cut, biggest.end - cut)
        biggest.size = cut - biggest.offset
        self.parts.insert(self.parts.index(biggest) + 1, tail)
        self._dirty = True
        return tail

    async def _worker(self, located: Located) -> None:
        while (part := self._next_part()) is not None:
            part.active = True
            try:
                await self._fetch_part(located, part)
            finally:
                part.active = False
            self._dirty = True

    async def _fetch_part(self, located: Located, part: Part) -> None:
        failures = 0
        while part.remaining > 0:
            before = part.completed
            try:
                await self._stream(located, part)
            except _Retryable as exc:
                if part.completed > before:
                    failures = 0  # it moved: the connection, not the server, is the problem
                failures += 1
                if failures > self.options.retries:
                    raise DownloadError(
                        f"blob {self.short}: bytes {part.offset + part.completed}-{part.end - 1} "
                        f"failed {failures} times; last error: {exc}"
                    ) from None
                delay = self.options.delay(failures)
                log.info("%s part at %d: %s; retrying in %.2fs", self.short, part.offset, exc,
                         delay)
                await asyncio.sleep(delay)

    async def _stream(self, located: Located, part: Part) -> None:
        start = part.offset + part.completed
        whole = start == 0 and part.end == self.total
        headers = {**located.headers, "Accept-Encoding": "identity"}
        if located.ranges:
            headers["Range"] = f"bytes={start}-{part.end - 1}"
        timeout = httpx.Timeout(self.options.stall_timeout)  # read: no bytes for this long
        try:
            async with self.client.stream("GET", located.url, headers=headers,
                                          timeout=timeout) as response:
                self._check_response(response, start, whole)
                async for chunk in response.aiter_raw():
                    room = part.end - (part.offset + part.completed)
                    data = chunk if len(chunk) <= room else chunk[:room]
                    try:
                        os.pwrite(self._fd, data, part.offset + part.completed)
                    except OSError as exc:
                        if _is_disk_full(exc):
                            raise self._disk_full(exc) from exc
                        raise
                    part.completed += len(data)
                    self.completed += len(data)
                    self.received += len(data)
                    self._dirty = True
                    self._arrived.set()
                    if self.completed >= self.total:
                        self.last_byte_at = time.monotonic()
                    if part.completed >= part.size:
                        break  # done, or another worker took the rest of this part
        except httpx.TimeoutException as exc:
            raise _Retryable(f"stalled: no bytes for {self.options.stall_timeout:g}s") from exc
        except httpx.TransportError as exc:
            raise _Retryable(f"connection failed: {exc!r}") from exc
        if part.remaining > 0:
            raise _Retryable("connection closed before the part was complete")

    def _check_response(self, response: httpx.Response, start: int, whole: bool) -> None:
        status = response.status_code
        if status in _RETRY_STATUS:
            raise _Retryable(f"server answered {status}")
        if status == 200 and whole:
            return
        if status == 206:
            content_range = response.headers.get("content-range", "")
            first = content_range.removeprefix("bytes ").partition("-")[0]
            if first == str(start):
                return
            raise DownloadError(f"asked for bytes from {start}, got {content_range!r}")
        if status == 200:
            raise DownloadError(f"{_where(str(response.url))} ignored a Range request")
        raise DownloadError(f"{_where(str(response.url))} answered {status}")


def _first(group: BaseExceptionGroup) -> BaseException:
    """The error to report from a failed task group: cancellation and disk full win (they
    stopped everything), else the first failure."""
    leaves: list[BaseException] = []

    def collect(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                collect(inner)
        else:
            leaves.append(exc)

    collect(group)
    for kind in (asyncio.CancelledError, KeyboardInterrupt, DiskFullError, DownloadError):
        for leaf in leaves:
            if isinstance(leaf, kind):
                return leaf
    return leaves[0]


ProgressCallback = Callable[[Progress], None]


class Downloader:
    """Fetches blobs into a store; concurrent requests for one digest share one download."""

    def __init__(self, store: ModelStore, options: DownloadOptions,
                 client: httpx.AsyncClient | None = None) -> None:
        self.store = store
        self.options = options
        self.client = client or client_for(options)
        self._active: dict[str, tuple[BlobDownload, asyncio.Task[None]]] = {}
        self._waiters: dict[str, int] = {}

    async def aclose(self) -> None:
        tasks = [task for _, task in self._active.values()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=10)
        await self.client.aclose()

    async def fetch(
        self,
        digest: str,
        url: str,
        expected_size: int | None = None,
        headers: Mapping[str, str] | None = None,
        on_progress: ProgressCallback | None = None,
        interval: float = 0.1,
    ) -> BlobDownload | None:
        """Ensure the blob is in the store; None if it already was (nothing is fetched)."""
        report = on_progress or (lambda progress: None)
        if self.store.has_blob(digest, expected_size):
            size = self.store.blob_path(digest).stat().st_size
            report(Progress(digest, size, size, f"pulling {digest[7:19]}"))
            return None
        active = self._active.get(digest)
        if active is None:
            download = BlobDownload(self.store, digest, url, expected_size, headers or {},
                                    self.client, self.options)
            task = asyncio.create_task(download.run())
            active = (download, task)
            self._active[digest] = active
            task.add_done_callback(lambda _: self._active.pop(digest, None))
        download, task = active
        self._waiters[digest] = self._waiters.get(digest, 0) + 1
        try:
            while not task.done():
                report(download.progress())
                await asyncio.wait({task}, timeout=interval)
            report(download.progress())
            task.result()  # raises the download's error to every waiter
            return download
        finally:
            self._waiters[digest] -= 1
            if self._waiters[digest] == 0:
                del self._waiters[digest]
                if not task.done():
                    # Nobody wants it any more. Wait for it to record its progress, so a pull
                    # started right after this one returns resumes from all of it.
                    task.cancel()
                    await asyncio.wait({task}, timeout=10)
