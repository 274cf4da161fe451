"""Advisory file locks (``flock``) shared between switchboard processes.

Two uses: a runner holds a shared lock on its model file for the child's whole life, so
``switchboard rm`` in another process can tell the blob is in use; and a download holds an
exclusive lock on its partial file, so two processes never write one blob at once. The kernel
drops a lock when its holder dies, so a killed process never leaves one behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path


def hold_shared(path: Path) -> int | None:
    """A shared lock on ``path``, as an fd to close when done; None if it cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    fcntl.flock(fd, fcntl.LOCK_SH)  # only exclusive holders conflict, and they never wait
    return fd


def release(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)  # closing drops the lock


def in_use(path: Path) -> bool:
    """Whether any process holds a lock on ``path`` (a missing file is not in use)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


@contextlib.asynccontextmanager
async def exclusive(
    path: Path, poll: float = 0.2, on_wait: Callable[[], None] | None = None
) -> AsyncIterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing), polling while another process
    has it: a blocking ``flock`` would stall the event loop. ``on_wait`` is called once if
    the lock was busy. Cancellation stops the wait."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        waited = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited and on_wait is not None:
                    on_wait()
                waited = True
                await asyncio.sleep(poll)
        yield
    finally:
        os.close(fd)
