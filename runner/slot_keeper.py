"""Prompt caches across swaps: a runner's slots are saved as it stops, and a new runner of the
same key restores the one a request's prompt extends before that request runs.

The supervisor acts through one :class:`SlotKeeper`: :meth:`key` when it launches a runner (the
key names the directory passed as ``--slot-save-path``), :meth:`restorable` once it is up,
:meth:`save` before it stops one, and :meth:`restore` when the relay asks, for a request on a
runner that still has slots untouched since its load. Everything here is best effort: a slot
action that fails costs the request its cache, never the request.

Why this works on Gemma 3 only with ``--swa-full``: a restore clears the slot's checkpoints,
and a sliding-window cache saved at ``n_swa`` positions cannot serve a prefix without one, so
llama-server evaluated the whole prompt again (``cache_n`` 0, llama.cpp #26676). A full-size
cache has no window to lose (``bench/findings.md``, issue 23).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from runner import slot_actions
from runner.process import LaunchSpec, RunnerProcess, RunnerState, loopback_client
from runner.prompt_cache import MIN_TOKENS, PromptCache, runner_key
from runner.slot_actions import SlotActionError

log = logging.getLogger(__name__)

# A runner's saves in all, and one request's restore: a save writes tens of MB (6.8 ms for
# 2,442 tokens of Gemma 270M), a restore reads them back. Beyond this the runner is stuck (or
# is not llama-server), and the stop or the request goes on without. A deadline, not httpx's
# timeouts alone: those bound each read, and an answer that never ends never times out.
ACTION_TIMEOUT = 10.0


@dataclass(eq=False)
class RunnerSlots:
    """What the keeper knows of one runner: its key, and the slots no request has used yet
    (only those are restored into: a used slot holds a cache of its own)."""

    key: str
    blank: set[int] = field(default_factory=set)
    used: bool = False  # a request was leased to it: only then can a slot hold anything
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class SlotKeeper:
    """The saved prompt caches of every runner this supervisor starts."""

    def __init__(self, root: Path, budget: int) -> None:
        self._cache = PromptCache(root, budget)
        self._lock = asyncio.Lock()  # the store is read and written off the loop, one at a time

    @property
    def enabled(self) -> bool:
        return self._cache.enabled

    async def key(self, binary: Path, spec: LaunchSpec) -> str:
        """The key of a runner of ``spec`` run by ``binary``: everything but its name, port,
        threads, sampling and template (none of which is in the cache) must match."""
        files = [spec.model_path, *(p for p in (spec.projector, spec.draft) if p),
                 *(a for a, _ in spec.adapters)]
        parts: Sequence[object] = (spec.ctx_size, spec.parallel, spec.gpu_layers,
                                   spec.mode.value, spec.extra_args, spec.swa_full,
                                   tuple(s for _, s in spec.adapters))
        return await asyncio.to_thread(runner_key, binary, parts, files)

    def directory(self, key: str) -> Path:
        return self._cache.directory(key)

    async def restorable(self, key: str, parallel: int) -> RunnerSlots:
        """A runner just up: every slot blank if caches of its key are saved, else none (so
        its requests never ask)."""
        async with self._lock:
            saved = await asyncio.to_thread(self._cache.entries, key)
        return RunnerSlots(key, set(range(parallel)) if saved else set())

    async def save(self, process: RunnerProcess, slots: RunnerSlots) -> None:
        """Save every slot of a runner about to stop; what holds too few tokens is dropped."""
        if process.state is not RunnerState.READY or not slots.used:
            return
        started = time.perf_counter()
        kept: list[int] = []
        try:
            async with asyncio.timeout(ACTION_TIMEOUT):
                await self._save_each(process, slots, kept)
        except TimeoutError:
            log.warning("prompt cache: saving the slots of %s took over %.0f s; stopped",
                        process.spec.model, ACTION_TIMEOUT)
        if kept:
            log.info("prompt cache: saved %s tokens of %s in %.0f ms",
                     " + ".join(map(str, kept)), process.spec.model,
                     (time.perf_counter() - started) * 1000)

    async def _save_each(self, process: RunnerProcess, slots: RunnerSlots,
                         kept: list[int]) -> None:
        async with loopback_client(ACTION_TIMEOUT) as client:
            for slot in range(process.spec.parallel):
                name = PromptCache.new_name()
                try:
                    tokens = await slot_actions.save(client, process.base_url, process.api_key,
                                                     slot, name)
                except SlotActionError as exc:
                    log.warning("prompt cache: saving slot %d of %s failed: %s", slot,
                                process.spec.model, exc)
                    continue
                async with self._lock:
                    if tokens < MIN_TOKENS:
                        with contextlib.suppress(OSError):
                            (self._cache.root / slots.key / name).unlink()
                        continue
                    saved = await asyncio.to_thread(self._cache.add, slots.key, name)
                if saved is not None:
                    kept.append(len(saved.tokens))

    async def restore(self, process: RunnerProcess, slots: RunnerSlots, path: bytes,
                      body: bytes) -> int | None:
        """The slot to send this request to (its ``id_slot``), with the saved cache its prompt
        extends restored there first; None to let the runner choose (no blank slot left, or a
        prompt we cannot tokenize)."""
        if not slots.blank:
            return None
        async with slots.lock:
            if not slots.blank:
                return None
            started = time.perf_counter()
            try:
                async with asyncio.timeout(ACTION_TIMEOUT), \
                        loopback_client(ACTION_TIMEOUT) as client:
                    tokens = await slot_actions.prompt_tokens(
                        client, process.base_url, process.api_key, path, body)
                    if tokens is None:
                        return None
                    slot = min(slots.blank)
                    slots.blank.discard(slot)
                    async with self._lock:
                        found = await asyncio.to_thread(self._cache.best, slots.key, tokens)
                    if found is None:
                        return slot
                    saved, shared = found
                    restored = await slot_actions.restore(client, process.base_url,
                                                          process.api_key, slot, saved.name)
                    async with self._lock:
                        await asyncio.to_thread(self._cache.used, saved)
            except (SlotActionError, TimeoutError) as exc:
                log.warning("prompt cache: restoring for %s failed: %r", process.spec.model, exc)
                return None
        log.info("prompt cache: restored %d tokens into slot %d of %s in %.0f ms (%d of the "
                 "prompt's %d match)", restored, slot, process.spec.model,
                 (time.perf_counter() - started) * 1000, shared, len(tokens))
        return slot
