"""``preload:``: models loaded as the server starts, so the first request does not wait for
one. In the background, one after another (loads are one at a time anyway), each held just
long enough to be ready and then left to its keep-alive; a name that does not resolve, or a
load that fails, is one line in the log and the server serves on."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from runner.service import ModelService, RunnerOptions, ServiceError

log = logging.getLogger(__name__)


async def _preload(service: ModelService, names: tuple[str, ...]) -> None:
    for name in names:
        if service.canonical(name) is None:
            log.error("preload: model '%s' not found (switchboard ls lists them)", name)
            continue
        try:
            async with service.acquire(name, RunnerOptions(mode=None)):
                log.info("preload: %s is loaded", name)
        except ServiceError as exc:
            log.error("preload: %s did not load: %s", name, exc)


@contextlib.asynccontextmanager
async def preloading(service: ModelService, names: tuple[str, ...]) -> AsyncIterator[None]:
    """Preload ``names`` while the block runs; a shutdown cancels what is left."""
    task = asyncio.create_task(_preload(service, names), name="preload") if names else None
    try:
        yield
    finally:
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
