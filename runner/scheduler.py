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
- Memory fit: a model's need is estimated from its GGUF header (:mod:`runner.memory`). A loaded
  runner counts at its latest RSS sample (what it holds now). What is remembered for its next
  load is its steady state, RSS + VRAM sampled once it turns ready and before any request,
  keyed by runner key and shape: never a later sample, which can be one request's peak (a
  ``n_probs`` request took a 334 MiB runner to 1.08 GiB) or memory glibc kept after it. A model
  that cannot fit even alone is refused with both figures and nothing evicted (after one retry
  with its header estimate if the refusal was on a remembered figure); one that cannot fit
  beside the loaded ones drains a victim first. Nothing new loads while an unload is still in
  progress.
- A runner that exits unexpectedly leaves the loaded set at once; the next request reloads it.
  One whose ``/health`` stops answering (checked every ``health_interval``) is killed and
  reloaded the same way.
- Runners are keyed by model and mode (chat, embeddings or reranking: llama-server started
  with ``--embeddings`` or ``--reranking`` serves nothing else), so one GGUF can serve several.
  A request whose options shape its runner differently (context, slots, GPU layers,
  arguments) drains the loaded one and reloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from runner.backends import EMBEDDED_META, BackendError, Backends
from runner.catalog import Catalog, open_store
from runner.context_window import context_window
from runner.errors import (
    ModelInUseError,
    ModelNotFoundError,
    ModelTooLargeError,
    ModeNotServedError,
    NoRunnerError,
    QueueFullError,
    RunnerStartError,
    ShuttingDownError,
)
from runner.events import EventBus
from runner.gguf_header import GGUFError, cached_header, read_header
from runner.memory import GpuMemory, estimate, gpu_memory_of, gpus, system_memory
from runner.models import ModelPaths, resolve_template
from runner.modes import RunnerMode
from runner.payloads import Payloads
from runner.policy import RunnerView, expires_at, has_room, next_to_load, pick_victim
from runner.process import LaunchSpec, RunnerProcess, RunnerState, relay_connections
from runner.service_types import ContextWindow, Lease, RunnerInfo, RunnerOptions, StartingRunner
from runner.settings import ModelConfig, Settings, child_environment
from runner.units import GiB, format_bytes
from runner.variants import GpuInfo, order_variants, read_cpu_flags

log = logging.getLogger(__name__)

# "Automatic" allows this many runners (Ollama's per-GPU default); memory fit applies on top.
AUTO_MAX_LOADED = 3
HEALTH_STRIKES = 2  # consecutive failed /health checks before a runner is killed
GPU_MARGIN = 1 * GiB  # per device, as llama-server's --fit keeps free
VRAM_RECOVERY = 5.0  # seconds to wait for a stopped runner's GPU memory to show as free


@dataclass(frozen=True)
class Shape:
    """What a runner was started with; a request needing another shape needs another runner."""

    ctx_size: int
    parallel: int
    gpu_layers: int | str
    args: tuple[str, ...]
    mode: RunnerMode


def runner_key(model: str, mode: RunnerMode) -> str:
    """The loaded-set key: a model's runners of different modes live side by side."""
    return model if mode is RunnerMode.CHAT else f"{model}+{mode}"


@dataclass(eq=False)
class _Loaded:
    key: str
    shape: Shape
    runner: RunnerProcess
    keep_alive: float
    estimate: int  # what fitting assumed for the load: a remembered figure or the header's
    actual: int | None = None  # the latest RSS + VRAM sample
    vram: int = 0
    refs: int = 0
    draining: bool = False
    expires_at: float | None = None
    timer: asyncio.TimerHandle | None = None
    health_failures: int = 0
    context: ContextWindow = field(default_factory=ContextWindow)

    @property
    def usable(self) -> bool:
        return self.runner.state is RunnerState.READY and not self.draining

    @property
    def need(self) -> int:
        """What fitting counts for this runner while it is loaded: its latest sample (memory it
        really holds now, a request's peak included), else its estimate."""
        return self.actual if self.actual is not None else self.estimate

    def measure(self) -> int | None:
        """Resident memory now (RAM + the last VRAM reading); the last sample if it has exited."""
        rss = self.runner.rss_bytes()
        if rss is not None:
            self.actual = rss + self.vram
        return self.actual


@dataclass(eq=False)
class _Pending:
    key: str
    model: str
    shape: Shape
    config: ModelConfig
    keep_alive: float | None
    future: asyncio.Future[_Loaded]

    @property
    def wants(self) -> tuple[str, Shape]:
        return (self.key, self.shape)


RunnerFactory = Callable[..., RunnerProcess]
Estimator = Callable[[Path, int, int], int]  # (gguf, ctx, parallel) -> bytes
MemoryProbe = Callable[[], tuple[int, int]]  # () -> (total, available) bytes
GpuProbe = Callable[[], list[GpuMemory]]
GpuUsage = Callable[[int], int]  # pid -> bytes of GPU memory it holds


def _pooling_for(path: Path) -> str | None:
    """``mean`` for a model whose GGUF names no pooling type: OpenAI-style embeddings need one
    and llama-server refuses 'none'. A model that names one keeps it."""
    try:
        info = read_header(path)
    except (GGUFError, OSError):
        return "mean"
    return None if f"{info.architecture}.pooling_type" in info.metadata else "mean"


def _context_of(spec: LaunchSpec) -> ContextWindow:
    # The estimate parsed this header a moment ago (cached): usually a stat.
    return context_window(spec.model_path, spec.ctx_size, spec.parallel, spec.extra_args,
                          cached_header(spec.model_path))


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
        gpu: GpuInfo | None = None,
        gpu_probe: GpuProbe = gpus,
        gpu_usage: GpuUsage = gpu_memory_of,
        on_load: Callable[[str, float], None] | None = None,
        on_stop: Callable[[int], None] | None = None,
        catalog: Catalog | None = None,
        backends: Backends | None = None,
        events: EventBus | None = None,
    ) -> None:
        self._settings = settings
        self._backends = backends or Backends(settings.home / "backends", settings.system_backends)
        self.catalog = catalog or Catalog(settings, open_store(settings))
        self._payloads = payloads
        self._cpu_flags = read_cpu_flags() if cpu_flags is None else cpu_flags
        self._factory = runner_factory
        self._clock = clock
        self._estimator = estimator
        self._memory = memory
        self._gpu = gpu
        self._gpu_probe = gpu_probe
        self._gpu_usage = gpu_usage
        self._on_load = on_load
        # Told each runner's port once it is gone, so the relay's pool forgets that address.
        self._on_stop = on_stop
        self._events = events
        self._published_depth = 0
        self._starting: dict[str, tuple[RunnerProcess, int]] = {}  # key -> (runner, estimate)
        # (runner key, shape) -> steady-state memory of its last runner, for its next fit
        self._learned: dict[tuple[str, Shape], int] = {}
        self._held: set[str] = set()  # runner keys kept unloaded while their model is removed
        self._paths = ModelPaths(settings.home, self.catalog.store)
        self._loaded: dict[str, _Loaded] = {}
        self._pending: list[_Pending] = []
        self._stopping: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None
        self._monitor: asyncio.Task[None] | None = None
        self._closed = False
        self.loads = 0  # runners started, for tests and metrics

    @property
    def queue_depth(self) -> int:
        return sum(1 for pending in self._pending if not pending.future.done())

    @property
    def max_loaded(self) -> int:
        return self._settings.max_loaded_models or AUTO_MAX_LOADED

    def variants(self) -> list[str]:
        """Runner variants to try on this machine, best first."""
        return order_variants(
            self._payloads.variants(), self._cpu_flags, self._gpu, self._settings.llm_library
        )

    @property
    def gpu(self) -> GpuInfo | None:
        return self._gpu

    def _uses_gpu(self) -> bool:
        variants = self.variants()
        return bool(self._gpu and variants and variants[0].startswith(self._gpu.library))

    # -- requests ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def acquire(
        self,
        model: str,
        options: RunnerOptions | None = None,
        keep_alive: float | None = None,
    ) -> AsyncIterator[Lease]:
        """A ready runner for ``model`` (name or alias), held until the block exits."""
        if self._closed:
            raise ShuttingDownError("switchboard is shutting down")
        resolved = self.catalog.resolve(model)
        if resolved is None:
            raise ModelNotFoundError(model)
        canonical, config = resolved
        shape = self._shape(config, options or RunnerOptions())
        if shape.mode not in config.modes:
            raise ModeNotServedError(model, shape.mode, config.modes)
        key = runner_key(canonical, shape.mode)
        entry = self._loaded.get(key)
        waited_for = queued_at = 0.0
        if entry is not None and entry.usable and entry.shape == shape:
            self._attach(entry, keep_alive)
        else:
            pending = _Pending(key, canonical, shape, config, keep_alive,
                               asyncio.get_running_loop().create_future())
            queued_at = time.time()
            entry = await self._enqueue(pending)
            if entry.runner.started_at >= queued_at:
                waited_for = entry.runner.load_seconds
        runner = entry.runner
        try:
            yield Lease(canonical, model, "127.0.0.1", runner.port, runner.api_key,
                        relay_connections(runner.spec.parallel),
                        max(time.time() - queued_at - waited_for, 0.0) if queued_at else 0.0,
                        waited_for, entry.context)
        finally:
            self._release(entry)

    def _shape(self, config: ModelConfig, options: RunnerOptions) -> Shape:
        return Shape(
            ctx_size=config.ctx_size if options.ctx_size is None else options.ctx_size,
            parallel=options.parallel or config.parallel or self._settings.num_parallel,
            gpu_layers=config.gpu_layers if options.gpu_layers is None else options.gpu_layers,
            args=config.args if options.args is None else options.args,
            mode=options.mode or config.primary_mode,
        )

    async def _enqueue(self, pending: _Pending) -> _Loaded:
        if len(self._pending) >= self._settings.max_queue:
            raise QueueFullError(self._settings.max_queue)
        self._pending.append(pending)
        self._publish_queue()
        self._ensure_dispatcher()
        self._wake.set()
        try:
            return await pending.future
        except asyncio.CancelledError:
            # The client left. Still queued: dropped before anything loads for it. Already
            # granted: give the reference back.
            if pending in self._pending:
                self._pending.remove(pending)
                self._publish_queue()
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

    def _unload(self, entry: _Loaded, reason: str, force: bool = False) -> None:
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
        if self._loaded.get(entry.key) is entry:
            del self._loaded[entry.key]
        log.info("unloading %s (%s)", entry.key, reason)
        self._publish_runner(entry.key, entry.runner, "stopping", reason=reason)
        task = asyncio.create_task(self._stop_runner(entry, force))
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
        if self._settings.health_interval > 0 and (self._monitor is None or self._monitor.done()):
            self._monitor = asyncio.create_task(self._watch_health())

    async def _watch_health(self) -> None:
        """Kill runners whose /health stops answering (a hung process never exits by itself);
        the next request for one loads it again."""
        while not self._closed:
            await asyncio.sleep(self._settings.health_interval)
            for entry in list(self._loaded.values()):
                if entry.runner.state is not RunnerState.READY:
                    continue
                if await entry.runner.check_health():
                    entry.health_failures = 0
                    self._measure_vram(entry)  # NVML is too slow to ask per request
                    continue
                entry.health_failures += 1
                if entry.health_failures >= HEALTH_STRIKES and self._loaded.get(entry.key) is entry:
                    log.warning("runner for %s failed %d health checks; killing it",
                                entry.key, entry.health_failures)
                    self._unload(entry, "health checks failed", force=True)

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
            if entry is not None and entry.usable and entry.shape == pending.shape:
                self._attach(entry, pending.keep_alive)
                pending.future.set_result(entry)
            else:
                waiting.append(pending)
        self._pending = waiting
        self._publish_queue()
        servable = frozenset((k, e.shape) for k, e in self._loaded.items() if e.usable)
        # A model being removed from the store stays unloaded until that ends; its requests wait.
        wanted = next_to_load([p.wants for p in waiting if p.key not in self._held], servable)
        if wanted is None or self._stopping:
            return  # nothing to load, or memory is still being returned
        key, shape = wanted
        current = self._loaded.get(key)
        if current is not None:
            if not current.draining and current.shape != shape:
                self._drain(current, "its requests need other options")  # a reload
            return  # woken again once it has stopped
        if any(entry.draining for entry in self._loaded.values()):
            return  # a swap is under way; its unload wakes us
        pending = next(p for p in waiting if p.wants == wanted)
        try:
            spec = await self._spec(pending)
            # The shape is part of the key: a ctx-8192 runner needs more than a ctx-2048 one.
            learned = self._learned.get(wanted)
            need = learned if learned is not None else await self._estimate(spec)
            budget, free = self._free_memory()
            if learned is not None and (need > budget or (need > free and not self._loaded)):
                # A remembered figure can be wrong (another build, a runner that held more
                # than usual): refuse only on the header's estimate; this load is measured anew.
                del self._learned[wanted]
                need = await self._estimate(spec)
                log.warning("%s: remembered %s does not fit in %s; retrying with its "
                            "estimate, %s", key, format_bytes(learned),
                            format_bytes(max(free, 0)), format_bytes(need))
            if need > budget:
                raise ModelTooLargeError(pending.model, need, budget)  # even alone: evict none
            if not has_room(len(self._loaded), self.max_loaded) or need > free:
                if self._loaded:
                    self._make_room(frozenset(p.key for p in waiting))
                    return
                raise ModelTooLargeError(pending.model, need, free)
            if key in self._held:
                return  # its removal began while we awaited: its end wakes us
            await self._load(key, shape, spec, pending.config, need)
        except Exception as exc:
            self._fail_waiters(wanted, exc)
        self._wake.set()  # grant what the load made servable, then look again

    def _fail_waiters(self, wanted: tuple[str, Shape], exc: Exception) -> None:
        for pending in [p for p in self._pending if p.wants == wanted]:
            self._pending.remove(pending)
            if not pending.future.done():
                pending.future.set_exception(exc)

    async def _estimate(self, spec: LaunchSpec) -> int:
        # Reading a header is file I/O: off the loop, so loaded traffic keeps flowing.
        return await asyncio.to_thread(
            self._estimator, spec.model_path, spec.ctx_size, spec.parallel
        )

    def _free_memory(self) -> tuple[int, int]:
        """(budget, free): what runners may use in all, and what is left beside loaded ones.

        With a GPU runner, device memory counts too (less llama-server's per-device margin):
        it places as many layers there as fit and the rest in RAM."""
        total, available = self._memory()
        devices = self._gpu_probe() if self._uses_gpu() else []
        device_total = sum(max(g.total - GPU_MARGIN, 0) for g in devices)
        device_free = sum(max(g.free - GPU_MARGIN, 0) for g in devices)
        budget = self._settings.memory_budget or total + device_total
        free = budget - sum(entry.need for entry in self._loaded.values())
        if self._settings.memory_budget is None:
            free = min(free, available + device_free)  # other processes use this machine too
        return budget, free

    def _measure_vram(self, entry: _Loaded) -> None:
        """Sample VRAM and RSS: at load, on health checks and on /api/ps; never per request (a
        /proc read, and NVML is slower)."""
        pid = entry.runner.pid
        if self._uses_gpu() and pid is not None:
            entry.vram = self._gpu_usage(pid)
        entry.measure()

    def _remember(self, entry: _Loaded) -> None:
        """Record the runner's steady state, sampled as it turns ready and before any request,
        for its next load. Only this sample: any later one may be one request's peak, and
        idle RSS after a big request stays high (glibc keeps freed memory), so learning from
        either would refuse the next load of a model that fits."""
        steady = entry.measure()
        if steady is not None:
            self._learned[(entry.key, entry.shape)] = steady

    async def _stop_runner(self, entry: _Loaded, force: bool) -> None:
        free_before = sum(g.free for g in self._gpu_probe()) if entry.vram else 0
        await entry.runner.stop(force=force)
        self._gone(entry.runner)
        self._publish_runner(entry.key, entry.runner, "stopped")
        if not entry.vram:
            return
        # The driver reports freed device memory late; loading into it before then would
        # see too little (Ollama's waitForVRAMRecovery).
        deadline = time.monotonic() + VRAM_RECOVERY
        while time.monotonic() < deadline:
            if sum(g.free for g in self._gpu_probe()) >= free_before + entry.vram * 0.8:
                return
            await asyncio.sleep(0.1)
        log.warning("GPU memory of %s not reported free after %.0fs", entry.key, VRAM_RECOVERY)

    def _make_room(self, wanted: frozenset[str]) -> None:
        views = [RunnerView(k, e.refs, e.keep_alive) for k, e in self._loaded.items()]
        victim = pick_victim(views, spare=wanted)
        if victim is not None:
            self._drain(self._loaded[victim], "to make room")

    def _drain(self, entry: _Loaded, why: str) -> None:
        """No new requests for ``entry``; it stops once its last one is released."""
        entry.draining = True
        log.info("draining %s %s (%d in flight)", entry.key, why, entry.refs)
        if entry.refs == 0:
            self._unload(entry, why)
        elif entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None

    def _launchers(self, backend: str) -> list[tuple[str, Callable[[], Path]]]:
        """(name, executable) to try for a model's backend, best first: the embedded
        ``llama-cpp`` meta is every payload variant this machine runs; a variant's name is just
        that one; anything else is an installed or system backend (a meta: its target)."""
        if backend == EMBEDDED_META:
            variants = self.variants()
            if not variants:
                raise NoRunnerError(
                    "no llama-server runner for this machine: run `switchboard build-runners` "
                    "or set SWITCHBOARD_LLAMA_SERVER"
                )
            return [(v, functools.partial(self._payloads.binary, v)) for v in variants]
        if backend in self._payloads.variants():
            return [(backend, functools.partial(self._payloads.binary, backend))]
        try:
            found = self._backends.launcher(backend)
        except BackendError as exc:
            raise NoRunnerError(str(exc)) from exc
        run = found.run
        assert run is not None  # launcher() only returns runnable backends
        return [(found.name, lambda: run)]

    async def _load(
        self, key: str, shape: Shape, spec: LaunchSpec, config: ModelConfig, need: int
    ) -> _Loaded:
        candidates = self._launchers(config.backend)
        errors: list[str] = []
        for variant, binary in candidates:
            runner = self._factory(
                spec,
                binary(),
                variant,
                child_environment(),
                self._settings.load_timeout,
                self._settings.stop_timeout,
                self._on_runner_exit,
            )
            runner.on_line = functools.partial(self._publish_line, key)
            self._starting[key] = (runner, need)
            self._publish_runner(key, runner, "starting", estimated_bytes=need)
            try:
                await runner.start()
            except RunnerStartError as exc:
                self._publish_runner(key, runner, "failed", error=str(exc))
                await runner.stop()
                # SIGILL: the variant uses instructions this CPU lacks; the next may run.
                if runner.returncode == -signal.SIGILL:
                    errors.append(f"{variant}: illegal instruction")
                    continue
                raise
            except BaseException:  # cancelled mid-load (shutdown): never orphan the child
                await runner.stop()
                raise
            finally:
                self._starting.pop(key, None)
            keep_alive = (
                config.keep_alive if config.keep_alive is not None else self._settings.keep_alive
            )
            entry = _Loaded(key, shape, runner, keep_alive, estimate=need,
                            context=await asyncio.to_thread(_context_of, spec))
            self._measure_vram(entry)
            self._remember(entry)
            self._loaded[key] = entry
            log.info("memory for %s: estimated %s, resident %s", key, format_bytes(need),
                     format_bytes(entry.actual) if entry.actual else "unknown")
            self.loads += 1
            if self._on_load is not None:
                self._on_load(key, runner.load_seconds)
            self._publish_runner(key, runner, "ready", estimated_bytes=need,
                                 actual_bytes=entry.actual, vram_bytes=entry.vram)
            return entry
        raise NoRunnerError("no runner variant could start: " + "; ".join(errors))

    async def _spec(self, pending: _Pending) -> LaunchSpec:
        model_path = await self._paths.path(pending.config.source)
        shape = pending.shape
        pooling = None
        if shape.mode is RunnerMode.EMBEDDINGS:
            pooling = await asyncio.to_thread(_pooling_for, model_path)
        return LaunchSpec(
            model=pending.model,
            model_path=model_path,
            ctx_size=shape.ctx_size,
            parallel=shape.parallel,
            gpu_layers=shape.gpu_layers,
            threads=self._settings.threads,
            mode=shape.mode,
            extra_args=shape.args,
            pooling=pooling,
            chat_template=(
                resolve_template(pending.config.chat_template)
                if pending.config.chat_template else None
            ),
        )

    def _gone(self, runner: RunnerProcess) -> None:
        if self._on_stop is not None and runner.port:
            self._on_stop(runner.port)

    def _on_runner_exit(self, runner: RunnerProcess) -> None:
        for key, entry in list(self._loaded.items()):
            if entry.runner is runner:
                if entry.timer is not None:
                    entry.timer.cancel()
                del self._loaded[key]
                self._gone(runner)
                log.warning("runner for %s left the loaded set; the next request reloads it",
                            key)
                self._publish_runner(key, runner, "failed", error="exited unexpectedly")
                self._wake.set()

    # -- events -----------------------------------------------------------------------------

    def _publish_runner(self, key: str, runner: RunnerProcess, state: str,
                        **extra: object) -> None:
        if self._events is None or not self._events.watched:
            return
        self._events.publish("runner", {
            "runner": key, "model": runner.spec.model, "mode": str(runner.spec.mode),
            "state": state, "pid": runner.pid, "variant": runner.variant,
            "load_seconds": round(runner.load_seconds, 3), "ctx_size": runner.spec.ctx_size,
            **extra,
        })

    def _publish_queue(self) -> None:
        depth = self.queue_depth
        if self._events is not None and depth != self._published_depth:
            self._published_depth = depth
            if self._events.watched:
                self._events.publish("queue", {"depth": depth})

    def _publish_line(self, key: str, line: str) -> None:
        if self._events is not None and self._events.watched:
            self._events.publish("log", {"runner": key, "line": line})

    def starting(self) -> list[StartingRunner]:
        """Runners being loaded now."""
        return [StartingRunner(key, runner.spec.model, str(runner.spec.mode), runner.pid,
                               runner.variant, need)
                for key, (runner, need) in self._starting.items()]

    def runner_output(self, key: str) -> list[str]:
        """The last output lines of a loaded or loading runner (empty if there is none)."""
        entry = self._loaded.get(key)
        runner = entry.runner if entry is not None else self._starting.get(key, (None, 0))[0]
        return list(runner.output) if runner is not None else []

    # -- administration ---------------------------------------------------------------------

    def loaded(self) -> list[RunnerInfo]:
        """Runners currently loaded, in load order."""
        return [
            RunnerInfo(
                runner=entry.key,
                model=entry.runner.spec.model,
                mode=str(entry.shape.mode),
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
                vram_bytes=entry.vram,
            )
            for entry in self._loaded.values()
        ]

    async def unload(self, model: str) -> bool:
        """Unload ``model`` once its in-flight requests finish; False if it was not loaded."""
        resolved = self.catalog.resolve(model)
        if resolved is None:
            raise ModelNotFoundError(model)
        entries = [self._loaded.get(runner_key(resolved[0], mode)) for mode in RunnerMode]
        present = [entry for entry in entries if entry is not None]
        for entry in present:
            self._drain(entry, "on request")
        if self._stopping:
            await asyncio.wait(set(self._stopping), timeout=self._settings.stop_timeout + 5)
        return bool(present)

    @contextlib.asynccontextmanager
    async def removing(self, model: str) -> AsyncIterator[None]:
        """Unload ``model``'s runners and keep them unloaded for the block (deleting it from
        the store); :class:`ModelInUseError` if any request is in flight, queued or loading
        for it, and then nothing has changed.

        The check and the unload happen in one step of the event loop, so no request can
        attach in between; requests arriving during the block wait, then load (or fail to
        find the model) once it ends."""
        resolved = self.catalog.resolve(model)
        if resolved is None:
            raise ModelNotFoundError(model)
        keys = {runner_key(resolved[0], mode) for mode in RunnerMode}
        present = [entry for key in keys if (entry := self._loaded.get(key)) is not None]
        users = (sum(entry.refs for entry in present)
                 + sum(1 for p in self._pending if p.key in keys and not p.future.done()))
        if users:
            raise ModelInUseError(model, f"{users} request{'s' if users > 1 else ''} in flight "
                                  "or waiting for it")
        if keys & self._starting.keys():
            raise ModelInUseError(model, "it is loading")
        held = keys - self._held  # another removal of the same model keeps its own hold
        self._held |= held
        try:
            before = set(self._stopping)
            for entry in present:
                self._unload(entry, "removing the model")
            stops = self._stopping - before
            if stops:
                await asyncio.wait(stops, timeout=self._settings.stop_timeout + 5)
            yield
        finally:
            self._held -= held
            self._wake.set()

    async def close(self) -> None:
        """Stop every runner (and any load in progress); each child is reaped."""
        self._closed = True
        for task in (self._dispatcher, self._monitor):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for pending in self._pending:
            if not pending.future.done():
                pending.future.set_exception(ShuttingDownError("switchboard is shutting down"))
        self._pending.clear()
        for entry in list(self._loaded.values()):
            self._unload(entry, "shutdown")
        if self._stopping:
            await asyncio.wait(set(self._stopping))
