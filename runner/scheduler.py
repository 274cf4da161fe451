"""Which runner serves a request: load on demand, keep alive, evict, queue, survive crashes.

Semantics of Ollama's ``server/sched.go`` in asyncio (decisions in :mod:`runner.policy`):

- A request for a loaded, usable model takes a reference at once (the fast path), so traffic to
  loaded models never waits behind a load. Anything else joins a bounded queue; a full queue is
  :class:`QueueFullError` (HTTP 503 with ``Retry-After``).
- One dispatcher task owns loading and eviction, so there is one load at a time. It grants every
  queued request whose model is usable, then loads what the oldest remaining request needs,
  making room first by draining a victim (no new requests; stopped when its last finishes).
- A draining model takes no new requests: they queue behind the swap, which is what turns
  alternating traffic into batches instead of one load per request.
- Keep-alive starts when the last reference is released (0 = unload then, negative = never);
  a request's ``keep_alive`` overrides the model's and the default.
- Memory fit: a model's need is estimated from its GGUF header (:mod:`runner.memory`), then
  replaced by the runner's measured RSS once it has run. A model that cannot fit even alone is
  refused with both figures and nothing evicted; one that cannot fit beside the loaded ones
  drains a victim first. Nothing new loads while an unload is still in progress.
- A runner that exits unexpectedly leaves the loaded set at once; the next request reloads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from runner.gguf_header import GGUFError, read_header
from runner.memory import estimate, format_bytes, system_memory
from runner.models import ModelPaths
from runner.payloads import Payloads
from runner.policy import RunnerView, expires_at, has_room, next_to_load, pick_victim
from runner.process import LaunchSpec, RunnerProcess, RunnerStartError, RunnerState
from runner.settings import ModelConfig, Settings, child_environment
from runner.variants import order_variants, read_cpu_flags

log = logging.getLogger(__name__)

# Until memory fitting lands, "automatic" allows this many runners (Ollama's per-GPU default).
AUTO_MAX_LOADED = 3


class ModelNotFoundError(LookupError):
    """No configured model has that name or alias."""


class NoRunnerError(RuntimeError):
    """No runner variant exists for this machine; the message says how to get one."""


class ShuttingDownError(RuntimeError):
    """The server is stopping and takes no new work."""


class ModelTooLargeError(RuntimeError):
    """The model needs more memory than can be made available for it."""

    def __init__(self, model: str, needs: int, available: int) -> None:
        super().__init__(
            f"model '{model}' needs {format_bytes(needs)}, "
            f"{format_bytes(max(available, 0))} available"
        )
        self.needs = needs
        self.available = available


class QueueFullError(RuntimeError):
    """Too many requests are waiting for a runner; retry after ``retry_after`` seconds."""

    def __init__(self, limit: int, retry_after: int = 1) -> None:
        super().__init__(f"server busy: {limit} requests are already waiting for a model")
        self.retry_after = retry_after


@dataclass
class Lease:
    """A claim on a ready runner for the length of one request."""

    model: str  # the canonical name the runner reports
    requested: str  # the name the client sent (may be an alias)
    runner: RunnerProcess
    base_url: str
    api_key: str
    port: int


@dataclass
class RunnerInfo:
    """A snapshot of one loaded runner, for ``/api/ps``."""

    model: str
    pid: int | None
    variant: str
    ctx_size: int
    parallel: int
    in_flight: int
    draining: bool
    expires_at: float | None  # epoch seconds; None while busy or when kept forever
    keep_alive: float
    load_seconds: float
    estimated_bytes: int
    actual_bytes: int | None


@dataclass(eq=False)
class _Loaded:
    key: str
    runner: RunnerProcess
    keep_alive: float
    estimate: int
    actual: int | None = None
    refs: int = 0
    draining: bool = False
    expires_at: float | None = None
    timer: asyncio.TimerHandle | None = None

    @property
    def usable(self) -> bool:
        return self.runner.state is RunnerState.READY and not self.draining

    @property
    def need(self) -> int:
        """What fitting counts for this runner: measured once it has run, else estimated."""
        return self.actual if self.actual is not None else self.estimate

    def measure(self) -> int | None:
        rss = self.runner.rss_bytes()
        if rss is not None:
            self.actual = max(self.actual or 0, rss)
        return self.actual


@dataclass(eq=False)
class _Pending:
    key: str
    config: ModelConfig
    keep_alive: float | None
    future: asyncio.Future[_Loaded]


RunnerFactory = Callable[..., RunnerProcess]
Estimator = Callable[[Path, int, int], int]  # (gguf, ctx, parallel) -> bytes
MemoryProbe = Callable[[], tuple[int, int]]  # () -> (total, available) bytes


def estimate_file(path: Path, ctx_size: int, parallel: int) -> int:
    """Bytes a runner of this GGUF needs; a header we cannot read counts as its file size plus
    a quarter (llama-server will then say what is wrong with the file)."""
    try:
        return estimate(read_header(path), ctx_size, parallel).total
    except (GGUFError, OSError) as exc:
        log.warning("cannot estimate %s from its header (%s); using its size", path, exc)
        try:
            return path.stat().st_size * 5 // 4
        except OSError:
            return 0


class Scheduler:
    """Hands out runners by model name; owns every runner process it starts."""

    def __init__(
        self,
        settings: Settings,
        payloads: Payloads,
        cpu_flags: frozenset[str] | None = None,
        runner_factory: RunnerFactory = RunnerProcess,
        clock: Callable[[], float] = time.time,
        estimator: Estimator = estimate_file,
        memory: MemoryProbe = system_memory,
    ) -> None:
        self._settings = settings
        self._payloads = payloads
        self._cpu_flags = read_cpu_flags() if cpu_flags is None else cpu_flags
        self._factory = runner_factory
        self._clock = clock
        self._estimator = estimator
        self._memory = memory
        self._learned: dict[str, int] = {}  # model -> measured need of its last runner
        self._paths = ModelPaths(settings.home)
        self._loaded: dict[str, _Loaded] = {}
        self._pending: list[_Pending] = []
        self._stopping: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None
        self._closed = False
        self.loads = 0  # runners started, for tests and metrics

    @property
    def max_loaded(self) -> int:
        return self._settings.max_loaded_models or AUTO_MAX_LOADED

    def variants(self) -> list[str]:
        """Runner variants to try on this machine, best first."""
        return order_variants(
            self._payloads.variants(), self._cpu_flags, override=self._settings.llm_library
        )

    # -- requests ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def acquire(
        self,
        model: str,
        options: dict[str, object] | None = None,
        keep_alive: float | None = None,
    ) -> AsyncIterator[Lease]:
        """A ready runner for ``model`` (name or alias), held until the block exits."""
        del options  # per-request runner-shaping options arrive with reloads
        if self._closed:
            raise ShuttingDownError("switchboard is shutting down")
        resolved = self._settings.resolve_model(model)
        if resolved is None:
            raise ModelNotFoundError(model)
        canonical, config = resolved
        entry = self._loaded.get(canonical)
        if entry is not None and entry.usable:
            self._attach(entry, keep_alive)
        else:
            entry = await self._enqueue(canonical, config, keep_alive)
        runner = entry.runner
        try:
            yield Lease(canonical, model, runner, runner.base_url, runner.api_key, runner.port)
        finally:
            self._release(entry)

    async def _enqueue(
        self, key: str, config: ModelConfig, keep_alive: float | None
    ) -> _Loaded:
        if len(self._pending) >= self._settings.max_queue:
            raise QueueFullError(self._settings.max_queue)
        pending = _Pending(key, config, keep_alive, asyncio.get_running_loop().create_future())
        self._pending.append(pending)
        self._ensure_dispatcher()
        self._wake.set()
        try:
            return await pending.future
        except asyncio.CancelledError:
            # The client left. Still queued: dropped before anything loads for it. Already
            # granted: give the reference back.
            if pending in self._pending:
                self._pending.remove(pending)
            fut = pending.future
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._release(fut.result())
            raise

    def _attach(self, entry: _Loaded, keep_alive: float | None) -> None:
        entry.refs += 1
        if keep_alive is not None:
            entry.keep_alive = keep_alive
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
        entry.expires_at = None

    def _release(self, entry: _Loaded) -> None:
        entry.refs -= 1
        if entry.refs > 0 or self._loaded.get(entry.key) is not entry:
            return
        measured = entry.measure()
        if measured is not None:
            self._learned[entry.key] = measured
        if entry.draining or entry.keep_alive == 0:
            self._unload(entry, "drained" if entry.draining else "keep_alive 0")
            return
        entry.expires_at = expires_at(entry.keep_alive, self._clock())
        if entry.expires_at is not None:
            entry.timer = asyncio.get_running_loop().call_later(
                entry.keep_alive, self._expire, entry
            )

    def _expire(self, entry: _Loaded) -> None:
        entry.timer = None
        # A request may have attached since the timer fired, or the runner may be gone.
        if entry.refs > 0 or self._loaded.get(entry.key) is not entry:
            return
        self._unload(entry, "keep-alive expired")

    def _unload(self, entry: _Loaded, reason: str) -> None:
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
        if self._loaded.get(entry.key) is entry:
            del self._loaded[entry.key]
        log.info("unloading %s (%s)", entry.key, reason)
        task = asyncio.create_task(entry.runner.stop())
        self._stopping.add(task)
        task.add_done_callback(self._stopped)

    def _stopped(self, task: asyncio.Task[None]) -> None:
        self._stopping.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("stopping a runner failed: %s", task.exception())
        self._wake.set()

    # -- the dispatcher ---------------------------------------------------------------------

    def _ensure_dispatcher(self) -> None:
        if self._dispatcher is None or self._dispatcher.done():
            self._dispatcher = asyncio.create_task(self._dispatch())

    async def _dispatch(self) -> None:
        while not self._closed:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._step()
            except Exception:
                log.exception("scheduler step failed; continuing")

    async def _step(self) -> None:
        waiting: list[_Pending] = []
        for pending in self._pending:
            if pending.future.done():
                continue  # its client left
            entry = self._loaded.get(pending.key)
            if entry is not None and entry.usable:
                self._attach(entry, pending.keep_alive)
                pending.future.set_result(entry)
            else:
                waiting.append(pending)
        self._pending = waiting
        usable = frozenset(key for key, entry in self._loaded.items() if entry.usable)
        key = next_to_load([p.key for p in waiting], usable)
        if key is None or self._stopping or key in self._loaded:
            return  # nothing to load, or wait: memory still being returned / its drain
        if any(entry.draining for entry in self._loaded.values()):
            return  # a swap is under way; its unload wakes us
        config = next(p.config for p in waiting if p.key == key)
        try:
            spec = await self._spec(key, config)
            need = await self._need(spec)
            budget, free = self._free_memory()
            if need > budget:
                raise ModelTooLargeError(key, need, budget)  # even alone: evict nothing
            if not has_room(len(self._loaded), self.max_loaded) or need > free:
                if self._loaded:
                    self._make_room(frozenset(p.key for p in waiting))
                    return
                raise ModelTooLargeError(key, need, free)
            await self._load(spec, config, need)
        except Exception as exc:
            self._fail_waiters(key, exc)
        self._wake.set()  # grant what the load made servable, then look again

    def _fail_waiters(self, key: str, exc: Exception) -> None:
        for pending in [p for p in self._pending if p.key == key]:
            self._pending.remove(pending)
            if not pending.future.done():
                pending.future.set_exception(exc)

    async def _need(self, spec: LaunchSpec) -> int:
        learned = self._learned.get(spec.model)
        if learned is not None:
            return learned
        # Reading a header is file I/O: off the loop, so loaded traffic keeps flowing.
        return await asyncio.to_thread(
            self._estimator, spec.model_path, spec.ctx_size, spec.parallel
        )

    def _free_memory(self) -> tuple[int, int]:
        """(budget, free): what runners may use in all, and what is left beside loaded ones."""
        total, available = self._memory()
        budget = self._settings.memory_budget or total
        free = budget - sum(entry.need for entry in self._loaded.values())
        if self._settings.memory_budget is None:
            free = min(free, available)  # other processes use this machine too
        return budget, free

    def _make_room(self, wanted: frozenset[str]) -> None:
        views = [RunnerView(k, e.refs, e.keep_alive) for k, e in self._loaded.items()]
        victim = pick_victim(views, spare=wanted)
        if victim is None:
            return
        entry = self._loaded[victim]
        entry.draining = True
        log.info("draining %s to make room (%d in flight)", victim, entry.refs)
        if entry.refs == 0:
            self._unload(entry, "evicted")
        elif entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None

    async def _load(self, spec: LaunchSpec, config: ModelConfig, need: int) -> _Loaded:
        key = spec.model
        variants = self.variants()
        if not variants:
            raise NoRunnerError(
                "no llama-server runner for this machine: run `switchboard build-runners` "
                "or set SWITCHBOARD_LLAMA_SERVER"
            )
        errors: list[str] = []
        for variant in variants:
            runner = self._factory(
                spec,
                self._payloads.binary(variant),
                variant,
                child_environment(),
                self._settings.load_timeout,
                self._settings.stop_timeout,
                self._on_runner_exit,
            )
            try:
                await runner.start()
            except RunnerStartError:
                await runner.stop()
                # SIGILL: the variant uses instructions this CPU lacks; the next may run.
                if runner.returncode == -signal.SIGILL:
                    errors.append(f"{variant}: illegal instruction")
                    continue
                raise
            except BaseException:  # cancelled mid-load (shutdown): never orphan the child
                await runner.stop()
                raise
            keep_alive = (
                config.keep_alive if config.keep_alive is not None else self._settings.keep_alive
            )
            entry = _Loaded(key, runner, keep_alive, estimate=need)
            entry.measure()
            self._loaded[key] = entry
            log.info("memory for %s: estimated %s, resident %s", key, format_bytes(need),
                     format_bytes(entry.actual) if entry.actual else "unknown")
            self.loads += 1
            return entry
        raise NoRunnerError("no runner variant could start: " + "; ".join(errors))

    async def _spec(self, canonical: str, config: ModelConfig) -> LaunchSpec:
        model_path = await self._paths.path(config.source)
        return LaunchSpec(
            model=canonical,
            model_path=model_path,
            ctx_size=config.ctx_size,
            parallel=config.parallel or self._settings.num_parallel,
            gpu_layers=config.gpu_layers,
            threads=self._settings.threads,
            extra_args=config.args,
        )

    def _on_runner_exit(self, runner: RunnerProcess) -> None:
        entry = self._loaded.get(runner.spec.model)
        if entry is not None and entry.runner is runner:
            if entry.timer is not None:
                entry.timer.cancel()
            del self._loaded[runner.spec.model]
            log.warning("runner for %s left the loaded set; the next request reloads it",
                        runner.spec.model)
            self._wake.set()

    # -- administration ---------------------------------------------------------------------

    def loaded(self) -> list[RunnerInfo]:
        """Runners currently loaded, in load order."""
        return [
            RunnerInfo(
                model=entry.key,
                pid=entry.runner.pid,
                variant=entry.runner.variant,
                ctx_size=entry.runner.spec.ctx_size,
                parallel=entry.runner.spec.parallel,
                in_flight=entry.refs,
                draining=entry.draining,
                expires_at=entry.expires_at,
                keep_alive=entry.keep_alive,
                load_seconds=entry.runner.load_seconds,
                estimated_bytes=entry.estimate,
                actual_bytes=entry.measure(),
            )
            for entry in self._loaded.values()
        ]

    async def unload(self, model: str) -> bool:
        """Unload ``model`` once its in-flight requests finish; False if it was not loaded."""
        resolved = self._settings.resolve_model(model)
        if resolved is None:
            raise ModelNotFoundError(model)
        entry = self._loaded.get(resolved[0])
        if entry is None:
            return False
        entry.draining = True
        if entry.refs == 0:
            self._unload(entry, "unload requested")
            await asyncio.wait(set(self._stopping), timeout=self._settings.stop_timeout + 5)
        return True

    async def close(self) -> None:
        """Stop every runner (and any load in progress); each child is reaped."""
        self._closed = True
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dispatcher
        for pending in self._pending:
            if not pending.future.done():
                pending.future.set_exception(ShuttingDownError("switchboard is shutting down"))
        self._pending.clear()
        for entry in list(self._loaded.values()):
            self._unload(entry, "shutdown")
        if self._stopping:
            await asyncio.wait(set(self._stopping))
