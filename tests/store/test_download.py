"""The blob downloader against a registry that misbehaves on request."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import itertools
import os
from pathlib import Path

import orjson
import pytest

from runner import download
from runner.download import (
    BlobDownload,
    DigestMismatchError,
    DiskFullError,
    Downloader,
    DownloadError,
    DownloadOptions,
    HostNotAllowedError,
    Part,
    Progress,
    plan_parts,
)
from runner.store import ModelStore
from tests.fakes.registry import Blob, FakeRegistry, Fault

FAST = DownloadOptions(parts=16, concurrency=4, stall_timeout=0.5, retries=3, backoff=0.01)


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models", "registry.example")


def _url(registry: FakeRegistry, blob: Blob) -> str:
    return f"{registry.url}/v2/library/m/blobs/{blob.digest}"


def _ranges(registry: FakeRegistry) -> list[int]:
    return [int(r.removeprefix("bytes=").split("-")[0])
            for method, _, r in registry.requests if method == "GET" and r]


def _requested(registry: FakeRegistry) -> int:
    """Bytes the ranged GETs asked for (what a resume costs)."""
    total = 0
    for method, _, header in registry.requests:
        if method == "GET" and header:
            start, end = header.removeprefix("bytes=").split("-")
            total += int(end) - int(start) + 1
    return total


async def _fetch(store: ModelStore, registry: FakeRegistry, blob: Blob,
                 options: DownloadOptions = FAST) -> Downloader:
    downloader = Downloader(store, options)
    try:
        await downloader.fetch(blob.digest, _url(registry, blob), blob.size)
    finally:
        await downloader.aclose()
    return downloader


def _partial_files(store: ModelStore, blob: Blob) -> tuple[Path, Path]:
    partial = store.partial_path(blob.digest)
    return partial, partial.with_suffix(".json")


def test_parts_tile_the_file_within_bounds() -> None:
    for total in (0, 1, 5 << 20, 253_113_024, 40 << 30):
        parts = plan_parts(total, 16)
        assert sum(p.size for p in parts) == total
        assert all(a.end == b.offset for a, b in itertools.pairwise(parts))
        assert all(p.size <= download.MAX_PART for p in parts)
    assert len(plan_parts(253_113_024, 16)) == 16
    assert len(plan_parts(100, 16)) == 1  # under MIN_PART: one request


async def test_blob_arrives_in_parallel_ranged_parts_and_verified(
    store: ModelStore, registry: FakeRegistry, small_gguf: Path
) -> None:
    blob = registry.add_blob(small_gguf)
    await _fetch(store, registry, blob)
    assert store.blob_path(blob.digest).read_bytes() == small_gguf.read_bytes()
    assert len(_ranges(registry)) == 16
    assert registry.bytes_sent == blob.size
    assert list(store.partial_dir.iterdir()) == []  # no partial, state or lock left


async def test_a_present_blob_is_not_fetched_again(
    store: ModelStore, registry: FakeRegistry, small_gguf: Path
) -> None:
    blob = registry.add_blob(small_gguf)
    await _fetch(store, registry, blob)
    registry.requests.clear()
    seen: list[Progress] = []
    downloader = Downloader(store, FAST)
    assert await downloader.fetch(blob.digest, _url(registry, blob), blob.size,
                                  on_progress=seen.append) is None
    await downloader.aclose()
    assert registry.requests == []
    assert seen[-1].completed == seen[-1].total == blob.size


async def test_cancelled_download_resumes_where_it_stopped(
    store: ModelStore, registry: FakeRegistry, small_gguf: Path
) -> None:
    blob = registry.add_blob(small_gguf)
    registry.rate = 24e6  # about a second for the whole blob
    downloader = Downloader(store, FAST)
    task = asyncio.create_task(downloader.fetch(blob.digest, _url(registry, blob), blob.size))
    partial, state = _partial_files(store, blob)
    while registry.bytes_sent < blob.size // 2:
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await downloader.aclose()
    recorded = sum(c for _, _, c in orjson.loads(state.read_bytes())["parts"])
    assert recorded >= blob.size // 3 and partial.is_file()
    registry.rate = None
    registry.requests.clear()
    await _fetch(store, registry, blob)
    assert _requested(registry) == blob.size - recorded  # exactly what was not recorded
    assert store.blob_path(blob.digest).read_bytes() == small_gguf.read_bytes()


async def test_a_stalled_part_reconnects_from_where_it_stopped(
    store: ModelStore, registry: FakeRegistry, small_gguf: Path
) -> None:
    blob = registry.add_blob(small_gguf)
    part = plan_parts(blob.size, 16)[5]
    registry.faults.append(Fault("stall", start=part.offset, after=300_000))
    await _fetch(store, registry, blob)
    assert store.blob_path(blob.digest).read_bytes() == small_gguf.read_bytes()
    # The second attempt asked only for the bytes after what the stalled one delivered.
    assert any(part.offset + 300_000 <= start < part.end for start in _ranges(registry))


async def test_server_errors_are_retried(
    store: ModelStore, registry: FakeRegistry, small_gguf: Path
) -> None:
    blob = registry.add_blob(small_gguf)
    part = plan_parts(blob.size, 16)[3]
    registry.faults.append(Fault("status", start=part.offset, times=2, status=500))
    await _fetch(store, registry, blob)
    assert _ranges(registry).count(part.offset) == 3
    assert store.has_blob(blob.digest, blob.size)


async def test_persistent_errors_give_up_and_keep_the_partial(
    store: ModelStore, registry: FakeRegistry, small_gguf: Path
) -> None:
    blob = registry.add_blob(small_gguf)
    part = plan_parts(blob.size, 16)[3]
    registry.faults.append(Fault("status", start=part.offset, times=100, status=503))
    with pytest.raises(DownloadError, match="failed 4 times"):
        await _fetch(store, registry, blob)
    assert _ranges(registry).count(part.offset) == FAST.retries + 1
    partial, state = _partial_files(store, blob)
    assert partial.is_file() and state.is_file()
    assert not store.has_blob(blob.digest)


async def test_a_dropped_connection_resumes_mid_part(
    store: ModelStore, registry: FakeRegistry, small_gguf: Path
) -> None:
    blob = registry.add_blob(small_gguf)
    part = plan_parts(blob.size, 16)[7]
    registry.faults.append(Fault("drop", start=part.offset, after=500_000))
    await _fetch(store, registry, blob)
    assert part.offset + 500_000 in _ranges(registry)
    assert store.blob_path(blob.digest).read_bytes() == small_gguf.read_bytes()


async def test_redirects_to_another_host_are_followed(
    store: ModelStore, registry: FakeRegistry, small_gguf: Path
) -> None:
    with FakeRegistry() as cdn:
        blob = cdn.add_blob(small_gguf)
        registry.redirect_to = cdn
        await _fetch(store, registry, blob)
        assert cdn.bytes_sent == blob.size and registry.bytes_sent == 0
    assert store.has_blob(blob.digest, blob.size)


async def test_a_redirect_outside_the_allowed_hosts_is_refused(
    store: ModelStore, small_gguf: Path
) -> None:
    with FakeRegistry() as origin, FakeRegistry() as elsewhere:
        blob = elsewhere.add_blob(small_gguf)
        origin.redirect_to = elsewhere
        # Same address, other spelling: the allow-list is about names, as users write them.
        origin_url = _url(origin, blob).replace("127.0.0.1", "localhost")
        options = DownloadOptions(**{**FAST.__dict__, "allowed_hosts": ("localhost",)})
        downloader = Downloader(store, options)
        with pytest.raises(HostNotAllowedError, match=r"127\.0\.0\.1"):
            await downloader.fetch(blob.digest, origin_url, blob.size)
        await downloader.aclose()
        assert elsewhere.requests == []


async def test_wrong_digest_removes_the_partial_and_writes_no_blob(
    store: ModelStore, registry: FakeRegistry, small_gguf: Path
) -> None:
    blob = registry.add_blob(small_gguf, digest="sha256:" + "0" * 64)
    with pytest.raises(DigestMismatchError, match="digest mismatch"):
        await _fetch(store, registry, blob)
    assert list(store.blobs_dir.iterdir()) == []
    partial, state = _partial_files(store, blob)
    assert not partial.exists() and not state.exists()


async def test_corrupted_bytes_fail_verification(
    store: ModelStore, registry: FakeRegistry, small_gguf: Path
) -> None:
    blob = registry.add_blob(small_gguf)
    registry.faults.append(Fault("corrupt", start=plan_parts(blob.size, 16)[9].offset))
    with pytest.raises(DigestMismatchError):
        await _fetch(store, registry, blob)
    assert not store.has_blob(blob.digest)


async def test_a_full_disk_stops_at_once_and_keeps_the_partial(
    store: ModelStore, registry: FakeRegistry, small_gguf: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    blob = registry.add_blob(small_gguf)
    writes = 0
    real_pwrite = os.pwrite

    def pwrite(fd: int, data: bytes, offset: int) -> int:
        nonlocal writes
        writes += 1
        if writes > 20:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    with pytest.raises(DiskFullError, match="kept"):
        await _fetch(store, registry, blob)
    assert len(_ranges(registry)) <= FAST.concurrency  # no retries after ENOSPC
    partial, state = _partial_files(store, blob)
    assert partial.is_file() and state.is_file()
    monkeypatch.undo()
    registry.requests.clear()
    await _fetch(store, registry, blob)
    assert _requested(registry) < blob.size
    assert store.blob_path(blob.digest).read_bytes() == small_gguf.read_bytes()


async def test_concurrent_fetches_of_one_blob_share_one_download(
    store: ModelStore, registry: FakeRegistry, small_gguf: Path
) -> None:
    blob = registry.add_blob(small_gguf)
    registry.rate = 48e6
    downloader = Downloader(store, FAST)
    seen: list[list[Progress]] = [[], []]
    await asyncio.gather(*(
        downloader.fetch(blob.digest, _url(registry, blob), blob.size, on_progress=s.append)
        for s in seen
    ))
    await downloader.aclose()
    assert registry.bytes_sent == blob.size
    for events in seen:
        assert events[-1].completed == blob.size
        assert any(0 < e.completed < blob.size for e in events)


async def test_hashing_keeps_up_with_the_download(
    store: ModelStore, registry: FakeRegistry, small_gguf: Path
) -> None:
    blob = registry.add_blob(small_gguf)
    registry.rate = 48e6
    downloader = Downloader(store, FAST)
    task = asyncio.create_task(downloader.fetch(blob.digest, _url(registry, blob), blob.size))
    hashed_midway = 0
    while not task.done():
        active = next(iter(downloader._active.values()), None)
        if active is not None and active[0].completed > blob.size * 0.8:
            hashed_midway = max(hashed_midway, active[0].hashed)
        await asyncio.sleep(0.01)
    await task
    await downloader.aclose()
    assert hashed_midway > blob.size // 4  # hashed while downloading, not after


def test_an_idle_worker_splits_the_part_with_most_left(store: ModelStore) -> None:
    blob = BlobDownload(store, "sha256:" + "1" * 64, "http://x/", 64 << 20, {}, None,  # type: ignore[arg-type]
                        FAST)
    blob.total = 64 << 20
    blob.parts = [Part(0, 32 << 20, completed=32 << 20), Part(32 << 20, 32 << 20, 2 << 20)]
    blob.parts[1].active = True
    tail = blob._next_part()
    assert tail is not None and tail.offset == (32 << 20) + (2 << 20) + (15 << 20)
    head = blob.parts[1]
    assert head.end == tail.offset and tail.end == 64 << 20
    assert [p.offset for p in blob.parts] == [0, 32 << 20, tail.offset]
    tail.active = True
    tail.completed = tail.size - (1 << 20)
    head.completed = head.size - (1 << 20)
    assert blob._next_part() is None  # too little left anywhere to be worth it


async def test_the_hash_covers_exactly_the_file(
    store: ModelStore, registry: FakeRegistry, tmp_path: Path
) -> None:
    odd = tmp_path / "odd.bin"
    odd.write_bytes(os.urandom(3 * 2**20 + 17))
    blob = registry.add_blob(odd)
    await _fetch(store, registry, blob)
    on_disk = store.blob_path(blob.digest).read_bytes()
    assert "sha256:" + hashlib.sha256(on_disk).hexdigest() == blob.digest


async def test_a_pull_in_another_process_is_waited_for_not_duplicated(
    store: ModelStore, registry: FakeRegistry, small_gguf: Path
) -> None:
    import fcntl

    blob = registry.add_blob(small_gguf)
    lock = store.partial_path(blob.digest).with_suffix(".lock")
    lock.parent.mkdir(parents=True)
    with lock.open("w") as other:  # what another switchboard process holds while it pulls
        fcntl.flock(other, fcntl.LOCK_EX)
        seen: list[Progress] = []
        downloader = Downloader(store, FAST)
        task = asyncio.create_task(downloader.fetch(blob.digest, _url(registry, blob),
                                                    blob.size, on_progress=seen.append))
        await asyncio.sleep(0.5)
        assert seen[-1].status.startswith("waiting for another process")
        assert registry.requests == []
        # The other process finishes: the blob appears, then its lock goes.
        store.blobs_dir.mkdir(parents=True, exist_ok=True)
        store.blob_path(blob.digest).write_bytes(small_gguf.read_bytes())
    await task
    await downloader.aclose()
    assert registry.requests == []
