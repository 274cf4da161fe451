"""The scheduler's hands: owns the loop, the runner processes and every I/O the decisions need.

:class:`runner.scheduler.Scheduler` decides; this module feeds it events and carries out the
effects it returns: it resolves names, reads GGUF headers and memory (``/proc``, NVML),
spawns ``llama-server`` children (trying each payload variant this CPU may run), checks their
health, keeps their timers and stops and reaps them. Every event goes through
:meth:`Supervisor._feed`, on the event loop, one at a time: the decisions never interleave.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass, field, replace
from pathlib import Path

from runner.backends import EMBEDDED_META, BackendError, Backends
from runner.catalog import Catalog, open_store
from runner.context_window import context_window
from runner.errors import (
    ModelNotFoundError,
    ModeNotServedError,
    NoRunnerError,
    RunnerStartError,
    ShuttingDownError,
)
from runner.events import EventBus
from runner.gguf_header import GGUFError, cached_header, read_header
from runner.memory import (
    GpuMemory,
    estimate,
    full_swa_cost,
    gpu_memory_of,
    gpus,
    system_memory,
)
from runner.model_defaults import sampling_args
from runner.model_source import resolve_template
from runner.modes import RunnerMode
from runner.payloads import Payloads
from runner.policy import pick_device
from runner.process import LaunchSpec, RunnerProcess, RunnerState, relay_connections
from runner.scheduler import (
    Drain,
    Effect,
    Event,
    Exited,
    Fail,
    Grant,
    HealthChecked,
    Left,
    Log,
    Lost,
    Memory,
    Prepare,
    Prepared,
    PrepareFailed,
    Ready,
    Refuse,
    Released,
    Remove,
    Removed,
    Requested,
    Sampled,
    Scheduler,
    SchedulerConfig,
    Shape,
    Shutdown,
    Spawn,
    StartFailed,
    Stop,
    Stopped,
    Timer,
    TimerFired,
    Unload,
    runner_key,
)
from runner.service_types import ContextWindow, Lease, RunnerInfo, RunnerOptions, StartingRunner
from runner.settings import ModelConfig, Settings, child_environment
from runner.slot_keeper import RunnerSlots, SlotKeeper
from runner.units import format_bytes
from runner.variants import GpuInfo, order_variants, read_cpu_flags

log = logging.getLogger(__name__)

# "Automatic" allows this many runners (Ollama's per-GPU default); memory fit applies on top.
AUTO_MAX_LOADED = 3
VRAM_RECOVERY = 5.0  # seconds to wait for a stopped runner's GPU memory to show as free
KEPT_OUTPUTS = 16  # runner keys whose last stopped runner's output is kept for its logs

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


def _companion_bytes(spec: LaunchSpec) -> int:
    """What a projector, a draft model and adapters add to a runner: their weights (a draft
    model's own KV cache is small beside them; llama-server sizes it like the model's)."""
    paths = [p for p in (spec.projector, spec.draft) if p] + [a for a, _ in spec.adapters]
    total = 0
    for path in paths:
        with contextlib.suppress(OSError):
            total += path.stat().st_size
    return total


def _has_swa(path: Path) -> bool:
    try:
        info = read_header(path)
    except (GGUFError, OSError):
        return False
    return info.arch_int("attention.sliding_window") > 0


def _full_swa_bytes(path: Path, ctx_size: int, parallel: int) -> int:
    """What ``--swa-full`` adds to a runner of this GGUF; 0 for a model without sliding-window
    layers (it neither needs nor pays for it) or a header we cannot read."""
    try:
        return full_swa_cost(read_header(path), ctx_size, parallel)
    except (GGUFError, OSError):
        return 0


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


@dataclass(eq=False)
class _Request:
    """A request between its arrival and its grant (or failure)."""

    model: str  # as the client named it
    canonical: str
    config: ModelConfig
    future: asyncio.Future[tuple[int, bool]] | None = None
    outcome: tuple[int, bool] | Exception | None = None  # decided before anyone awaited


@dataclass(eq=False)
class _Child:
    """A runner's process and what the supervisor knows of it beyond the scheduler's view."""

    key: str
    process: RunnerProcess
    context: ContextWindow = field(default_factory=ContextWindow)
    timer: asyncio.TimerHandle | None = None
    gpu: int | None = None  # CUDA_VISIBLE_DEVICES: the one GPU a copy is pinned to
    slots: RunnerSlots | None = None  # its saved prompt caches' key; None: it saves none


class Supervisor:
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
        on_load: Callable[[str, str, float], None] | None = None,
        on_stop: Callable[[int], None] | None = None,
        catalog: Catalog | None = None,
        backends: Backends | None = None,
        events: EventBus | None = None,
        node: str = "",
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
        self._node = node
        self.scheduler = Scheduler(SchedulerConfig(
            max_loaded=settings.max_loaded_models or AUTO_MAX_LOADED,
            max_queue=settings.max_queue,
            memory_budget=settings.memory_budget,
            swap_ride=settings.swap_ride,
        ))
        self._ids = itertools.count(1)
        self._requests: dict[int, _Request] = {}
        self._children: dict[int, _Child] = {}
        self._specs: dict[tuple[str, Shape], tuple[LaunchSpec, ModelConfig, str]] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # prepares and spawns
        self._stops: dict[int, asyncio.Task[None]] = {}
        # The output of the last runner of each key that stopped or failed, so its logs can
        # still be read (why did it fail?) until another takes its key; a few keys at most.
        self._last_output: dict[str, Collection[str]] = {}
        self._monitor: asyncio.Task[None] | None = None
        self._published_depth = 0
        self._closed = False
        self._device_count: int | None = None  # GPUs this machine's runners use, probed once
        self._slot_keeper = SlotKeeper(settings.home / "prompt-cache",
                                       settings.prompt_cache_budget)

    @property
    def loads(self) -> int:
        """Runners started, for tests and metrics."""
        return self.scheduler.loads

    @property
    def queue_depth(self) -> int:
        return self.scheduler.queue_depth

    @property
    def max_loaded(self) -> int:
        return self.scheduler.config.max_loaded

    @property
    def gpu(self) -> GpuInfo | None:
        return self._gpu

    def variants(self) -> list[str]:
        """Runner variants to try on this machine, best first."""
        return order_variants(
            self._payloads.variants(), self._cpu_flags, self._gpu, self._settings.llm_library
        )

    def _uses_gpu(self) -> bool:
        variants = self.variants()
        return bool(self._gpu and variants and variants[0].startswith(self._gpu.library))

    def _copies(self, config: ModelConfig) -> int:
        """Runners of one model this machine may run at once: one per GPU, up to the model's
        ``replicas``. Without two GPUs, one: copies on shared CPU cores only split them."""
        if config.replicas <= 1:
            return 1
        if self._device_count is None:
            self._device_count = len(self._gpu_probe()) if self._uses_gpu() else 0
        return min(config.replicas, self._device_count) if self._device_count > 1 else 1

    def _pin(self, key: str, config: ModelConfig, environment: dict[str, str]) -> int | None:
        """Pin a copy of a replicated model to one GPU (the roomiest holding no copy of it),
        so N GPUs hold N copies rather than N copies each split across every GPU."""
        if self._copies(config) <= 1:
            return None
        device = pick_device({g.index: g.free for g in self._gpu_probe()},
                             (c.gpu for c in self._children.values()
                              if c.key == key and c.gpu is not None))
        if device is not None:
            # NVML counts GPUs in PCI bus order, CUDA fastest first unless told otherwise.
            environment["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
            environment["CUDA_VISIBLE_DEVICES"] = str(device)
        return device

    # -- the one way into the scheduler -------------------------------------------------------

    def _feed(self, event: Event) -> list[Effect]:
        """Hand the scheduler one event and carry out what it decides; returns the effects
        (for a caller that must see a refusal)."""
        effects = self.scheduler.handle(event, self._clock())
        for effect in effects:
            self._apply(effect)
        depth = self.scheduler.queue_depth
        if self._events is not None and depth != self._published_depth:
            self._published_depth = depth
            if self._events.watched:
                self._events.publish("queue", {"depth": depth})
        return effects

    def _apply(self, effect: Effect) -> None:
        match effect:
            case Grant():
                self._settle(effect.request, (effect.runner, effect.waited_for_load))
            case Fail():
                self._settle(effect.request, effect.error)
            case Prepare():
                self._spawn_task(self._prepare(effect))
            case Spawn():
                self._spawn_task(self._start(effect))
            case Drain():
                child = self._children.get(effect.runner)
                log.info("draining %s %s (%d in flight)", child.key if child else effect.runner,
                         effect.reason, effect.in_flight)
            case Stop():
                self._begin_stop(effect)
            case Lost():
                child = self._children.pop(effect.runner, None)
                if child is not None:
                    self._gone(child.process)
                    self._publish_runner(child.key, child.process, "failed",
                                         error="exited unexpectedly")
            case Timer():
                self._set_timer(effect)
            case Log():
                log.log(effect.level, "%s", effect.message)
            case Refuse():
                pass  # raised by the caller that fed the event

    def _settle(self, request: int, outcome: tuple[int, bool] | Exception) -> None:
        pending = self._requests.get(request)
        if pending is None:
            return
        if pending.future is None:
            pending.outcome = outcome  # decided in the same step the request arrived
            return
        del self._requests[request]
        if pending.future.done():  # its client left as the grant was decided: give it back
            if not isinstance(outcome, Exception):
                self._feed(Released(request))
        elif isinstance(outcome, Exception):
            pending.future.set_exception(outcome)
        else:
            pending.future.set_result(outcome)

    def _spawn_task(self, coro: object) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)  # type: ignore[call-overload]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._ensure_monitor()

    # -- requests -----------------------------------------------------------------------------

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
        started = time.perf_counter()
        request = next(self._ids)
        pending = _Request(model, canonical, config)
        self._requests[request] = pending
        default_keep_alive = (config.keep_alive if config.keep_alive is not None
                              else self._settings.keep_alive)
        self._feed(Requested(request, runner_key(canonical, shape.mode), model, shape,
                             keep_alive, default_keep_alive, self._copies(config),
                             (options or RunnerOptions()).wait_for_room))
        outcome = pending.outcome
        if outcome is None:  # queued: wait for the scheduler's grant
            pending.future = asyncio.get_running_loop().create_future()
            try:
                outcome = await pending.future
            except asyncio.CancelledError:
                # The client left. Still queued: dropped before anything loads for it.
                if self._requests.pop(request, None) is not None:
                    self._feed(Left(request))
                elif pending.future.done() and not pending.future.cancelled() \
                        and pending.future.exception() is None:
                    self._feed(Released(request))  # granted as it left: give it back
                raise
        else:
            del self._requests[request]
        if isinstance(outcome, Exception):
            raise outcome
        runner_id, waited_for_load = outcome
        child = self._children[runner_id]
        process = child.process
        if child.slots is not None:
            child.slots.used = True
        load = process.load_seconds if waited_for_load else 0.0
        try:
            yield Lease(canonical, model, "127.0.0.1", process.port, process.api_key,
                        relay_connections(process.spec.parallel),
                        max(time.perf_counter() - started - load, 0.0), load, child.context,
                        self._node, defaults=config.request_defaults(),
                        prompt_cache=child.slots is not None and bool(child.slots.blank))
        finally:
            self._feed(Released(request))

    async def restore_prompt(self, lease: Lease, path: bytes, body: bytes) -> int | None:
        """For a request on ``lease``'s runner while it has blank slots: the saved prompt cache
        the request extends restored into one, and that slot (for ``id_slot``)."""
        child = next((c for c in self._children.values()
                      if c.process.port == lease.port and c.slots is not None), None)
        if child is None or child.slots is None:
            return None
        return await self._slot_keeper.restore(child.process, child.slots, path, body)

    def _shape(self, config: ModelConfig, options: RunnerOptions) -> Shape:
        return Shape(
            ctx_size=config.ctx_size if options.ctx_size is None else options.ctx_size,
            parallel=options.parallel or config.parallel or self._settings.num_parallel,
            gpu_layers=config.gpu_layers if options.gpu_layers is None else options.gpu_layers,
            args=config.args if options.args is None else options.args,
            mode=options.mode or config.primary_mode,
        )

    # -- loads --------------------------------------------------------------------------------

    async def _prepare(self, effect: Prepare) -> None:
        wanted = (effect.key, effect.shape)
        # The request that asked may have left since; any other waiting for it will do.
        pending = self._requests.get(effect.request) or next(
            (self._requests[w.request] for w in self.scheduler.queue
             if w.wants == wanted and w.request in self._requests), None)
        if pending is None:
            self._feed(PrepareFailed(effect.key, effect.shape, ShuttingDownError("unwanted")))
            return  # nobody is waiting for it any more: nothing is failed
        try:
            spec = await self._spec(pending.canonical, effect.shape, pending.config)
            self._specs[wanted] = (spec, pending.config, pending.model)
            # Reading a header is file I/O: off the loop, so loaded traffic keeps flowing.
            need = await asyncio.to_thread(self._estimator, spec.model_path, spec.ctx_size,
                                           spec.parallel)
            need += await asyncio.to_thread(_companion_bytes, spec)
            if spec.swa_full:
                need += await asyncio.to_thread(_full_swa_bytes, spec.model_path,
                                                spec.ctx_size, spec.parallel)
            memory = self._sample_memory()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._feed(PrepareFailed(effect.key, effect.shape, exc))
            return
        self._feed(Prepared(effect.key, effect.shape, need, memory))

    def room(self) -> int:
        """Bytes a new runner could have here now without waiting for a request."""
        return self.scheduler.room(self._sample_memory())

    def _sample_memory(self) -> Memory:
        total, available = self._memory()
        devices = self._gpu_probe() if self._uses_gpu() else []
        return Memory(total, available, tuple((g.total, g.free) for g in devices))

    async def _spec(self, canonical: str, shape: Shape, config: ModelConfig) -> LaunchSpec:
        model_path = await self.catalog.gguf(config)
        companions = await self.catalog.companions(config)
        pooling = None
        if shape.mode is RunnerMode.EMBEDDINGS:
            pooling = await asyncio.to_thread(_pooling_for, model_path)
        generating = shape.mode is RunnerMode.CHAT
        swa_full = "--swa-full" in shape.args or (generating and 0 < await asyncio.to_thread(
            _full_swa_bytes, model_path, shape.ctx_size, shape.parallel)
            <= self._settings.swa_full_max)
        return LaunchSpec(
            model=canonical,
            model_path=model_path,
            ctx_size=shape.ctx_size,
            parallel=shape.parallel,
            gpu_layers=shape.gpu_layers,
            threads=self._settings.threads,
            mode=shape.mode,
            extra_args=shape.args,
            pooling=pooling,
            chat_template=resolve_template(config.chat_template) if config.chat_template
            else None,
            sampling=sampling_args(config.options),
            projector=companions.projector,
            draft=companions.draft,
            adapters=companions.adapters,
            swa_full=swa_full,
            # Reuse shifts cached chunks, which a windowed cache cannot: llama-server would
            # only warn that it is off.
            cache_reuse=self._settings.cache_reuse if generating and (
                swa_full or not _has_swa(model_path)) else 0,
        )

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

    async def _start(self, effect: Spawn) -> None:
        key = effect.key
        spec, config, _ = self._specs.pop((key, effect.shape))
        try:
            process = await self._launch(effect.runner, key, spec, config, effect.need)
            context = await asyncio.to_thread(_context_of, spec)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._children.pop(effect.runner, None)
            self._feed(StartFailed(effect.runner, exc))
            return
        child = self._children[effect.runner]
        child.context = context
        vram = self._gpu_usage(process.pid) if self._uses_gpu() and process.pid else 0
        rss = process.rss_bytes()
        steady = rss + vram if rss is not None else None
        log.info("memory for %s: estimated %s, resident %s", key, format_bytes(effect.need),
                 format_bytes(steady) if steady else "unknown")
        if self._on_load is not None:
            self._on_load(spec.model, spec.mode.value, process.load_seconds)
        self._publish_runner(key, process, "ready", estimated_bytes=effect.need,
                             actual_bytes=steady, vram_bytes=vram)
        self._feed(Ready(effect.runner, steady, vram))

    async def _launch(self, runner_id: int, key: str, spec: LaunchSpec, config: ModelConfig,
                      need: int) -> RunnerProcess:
        errors: list[str] = []
        environment = child_environment()
        device = self._pin(key, config, environment)
        for variant, binary in self._launchers(config.backend):
            executable = binary()
            slots_key, slots_dir = await self._slots_key(executable, spec)
            launched = spec if slots_dir is None else replace(spec, slot_save_path=slots_dir)
            process = self._factory(
                launched,
                executable,
                variant,
                environment,
                self._settings.load_timeout,
                self._settings.stop_timeout,
                functools.partial(self._exited, runner_id),
            )
            process.on_line = functools.partial(self._publish_line, key)
            self._children[runner_id] = _Child(key, process, gpu=device)
            self._publish_runner(key, process, "starting", estimated_bytes=need)
            try:
                await process.start()
                if slots_key is not None:
                    self._children[runner_id].slots = await self._slot_keeper.restorable(
                        slots_key, spec.parallel)
            except RunnerStartError as exc:
                self._publish_runner(key, process, "failed", error=str(exc))
                await process.stop()
                self._keep_output(key, process)
                # SIGILL: the variant uses instructions this CPU lacks; the next may run.
                if process.returncode == -signal.SIGILL:
                    errors.append(f"{variant}: illegal instruction")
                    continue
                raise
            except BaseException:  # cancelled mid-load (shutdown): never orphan the child
                await process.stop()
                raise
            return process
        raise NoRunnerError("no runner variant could start: " + "; ".join(errors))

    async def _slots_key(self, binary: Path, spec: LaunchSpec) -> tuple[str | None,
                                                                      Path | None]:
        """The key a generating runner saves its slots under, and their directory; None for
        one that saves none (no budget, embeddings or reranking, the user's own
        --slot-save-path, or a home it cannot write to: the model still serves)."""
        if not self._slot_keeper.enabled or spec.mode is not RunnerMode.CHAT \
                or "--slot-save-path" in spec.extra_args:
            return None, None
        try:
            key = await self._slot_keeper.key(binary, spec)
            return key, self._slot_keeper.directory(key)
        except OSError as exc:
            log.warning("prompt cache off for %s: %s", spec.model, exc)
            return None, None

    def _exited(self, runner_id: int, process: RunnerProcess) -> None:
        child = self._children.get(runner_id)
        if child is not None and child.process is process:
            self._feed(Exited(runner_id))

    # -- stops and timers ---------------------------------------------------------------------

    def _begin_stop(self, effect: Stop) -> None:
        child = self._children.get(effect.runner)
        if child is None:
            self._feed(Stopped(effect.runner))
            return
        log.info("unloading %s (%s)", child.key, effect.reason)
        self._publish_runner(child.key, child.process, "stopping", reason=effect.reason)
        task = asyncio.ensure_future(self._stop(effect, child))
        self._stops[effect.runner] = task

    async def _stop(self, effect: Stop, child: _Child) -> None:
        try:
            free_before = sum(g.free for g in self._gpu_probe()) if effect.vram else 0
            if child.slots is not None and not effect.force:
                await self._slot_keeper.save(child.process, child.slots)
            await child.process.stop(force=effect.force)
            self._gone(child.process)
            self._publish_runner(child.key, child.process, "stopped")
            if effect.vram:
                # The driver reports freed device memory late; loading into it before then
                # would see too little (Ollama's waitForVRAMRecovery).
                deadline = time.monotonic() + VRAM_RECOVERY
                while sum(g.free for g in self._gpu_probe()) < free_before + effect.vram * 0.8:
                    if time.monotonic() >= deadline:
                        log.warning("GPU memory of %s not reported free after %.0fs",
                                    child.key, VRAM_RECOVERY)
                        break
                    await asyncio.sleep(0.1)
        except Exception:
            log.exception("stopping the runner for %s failed", child.key)
        finally:
            self._children.pop(effect.runner, None)
            self._stops.pop(effect.runner, None)
            if not self._closed:
                self._feed(Stopped(effect.runner))

    def _set_timer(self, effect: Timer) -> None:
        child = self._children.get(effect.runner)
        if child is None:
            return
        if child.timer is not None:
            child.timer.cancel()
            child.timer = None
        if effect.at is not None:
            at = effect.at
            child.timer = asyncio.get_running_loop().call_later(
                max(at - self._clock(), 0.0), self._timer_fired, effect.runner, at)

    def _timer_fired(self, runner_id: int, at: float) -> None:
        child = self._children.get(runner_id)
        if child is not None:
            child.timer = None
        self._feed(TimerFired(runner_id, at))

    def _keep_output(self, key: str, process: RunnerProcess) -> None:
        self._last_output.pop(key, None)
        self._last_output[key] = process.output
        while len(self._last_output) > KEPT_OUTPUTS:
            del self._last_output[next(iter(self._last_output))]

    def _gone(self, process: RunnerProcess) -> None:
        self._keep_output(runner_key(process.spec.model, process.spec.mode), process)
        if self._on_stop is not None and process.port:
            self._on_stop(process.port)

    # -- health -------------------------------------------------------------------------------

    def _ensure_monitor(self) -> None:
        if self._settings.health_interval > 0 and (self._monitor is None or self._monitor.done()):
            self._monitor = asyncio.create_task(self._watch_health())

    async def _watch_health(self) -> None:
        """Report each ready runner's /health answer (a hung process never exits by itself)
        and, while at it, its memory: NVML is too slow to ask per request."""
        while not self._closed:
            await asyncio.sleep(self._settings.health_interval)
            for runner in [r for r in self.scheduler.runners.values() if r.ready]:
                child = self._children.get(runner.id)
                if child is None or child.process.state is not RunnerState.READY:
                    continue
                ok = await child.process.check_health()
                if ok:
                    self._sample(runner.id, child)
                self._feed(HealthChecked(runner.id, ok))

    def _sample(self, runner_id: int, child: _Child) -> None:
        """RSS and VRAM now: at health checks and on /api/ps, never per request (a /proc
        read, and NVML is slower)."""
        process = child.process
        vram = self._gpu_usage(process.pid) if self._uses_gpu() and process.pid else 0
        rss = process.rss_bytes()
        self._feed(Sampled(runner_id, rss + vram if rss is not None else None, vram))

    # -- events -------------------------------------------------------------------------------

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

    def _publish_line(self, key: str, line: str) -> None:
        if self._events is not None and self._events.watched:
            self._events.publish("log", {"runner": key, "line": line})

    # -- administration -----------------------------------------------------------------------

    def starting(self) -> list[StartingRunner]:
        """Runners being loaded now."""
        found = []
        for runner in self.scheduler.runners.values():
            child = self._children.get(runner.id)
            if not runner.ready and child is not None:
                process = child.process
                found.append(StartingRunner(runner.key, process.spec.model,
                                            str(process.spec.mode), process.pid,
                                            process.variant, runner.estimate, self._node))
        return found

    def runner_output(self, key: str) -> list[str]:
        """The last output lines of the runner of ``key``: loaded or loading, else the last
        one that stopped or failed (empty if there was none)."""
        for runner in self.scheduler.runners.values():
            child = self._children.get(runner.id)
            if runner.key == key and child is not None:
                return list(child.process.output)
        for child in self._children.values():  # one stopping: out of the scheduler's set
            if child.key == key:
                return list(child.process.output)
        return list(self._last_output.get(key, ()))

    def loaded(self, sample: bool = True) -> list[RunnerInfo]:
        """Runners currently loaded, in load order; their memory sampled now, unless
        ``sample`` is False (routing, per request: as last sampled)."""
        found = []
        for runner in [r for r in self.scheduler.runners.values() if r.ready]:
            child = self._children.get(runner.id)
            if child is None:
                continue
            rss = child.process.rss_bytes() if sample else None
            if rss is not None:
                self._feed(Sampled(runner.id, rss + runner.vram, runner.vram))
            spec = child.process.spec
            found.append(RunnerInfo(
                runner=runner.key, model=spec.model, mode=str(runner.shape.mode),
                pid=child.process.pid, variant=child.process.variant, ctx_size=spec.ctx_size,
                parallel=spec.parallel, in_flight=runner.refs, draining=runner.draining,
                expires_at=runner.expires_at, keep_alive=runner.keep_alive,
                load_seconds=child.process.load_seconds, estimated_bytes=runner.estimate,
                actual_bytes=runner.actual, vram_bytes=runner.vram, node=self._node,
                gpu=child.gpu,
            ))
        return found

    def _keys(self, model: str) -> frozenset[str]:
        resolved = self.catalog.resolve(model)
        if resolved is None:
            raise ModelNotFoundError(model)
        return frozenset(runner_key(resolved[0], mode) for mode in RunnerMode)

    async def _await_stops(self, runners: set[int]) -> None:
        tasks = {self._stops[r] for r in runners if r in self._stops}
        if tasks:
            await asyncio.wait(tasks, timeout=self._settings.stop_timeout + 5)

    async def unload(self, model: str) -> bool:
        """Unload ``model`` once its in-flight requests finish; False if it was not loaded."""
        keys = self._keys(model)
        present = [r for r in self.scheduler.of(keys) if r.ready]
        self._feed(Unload(keys))
        await self._await_stops(set(self._stops))
        return bool(present)

    @contextlib.asynccontextmanager
    async def removing(self, model: str) -> AsyncIterator[None]:
        """Unload ``model``'s runners and keep them unloaded for the block (deleting it from
        the store); :class:`ModelInUseError` if any request is in flight, queued or loading
        for it, and then nothing has changed.

        The check and the unload are one scheduler event, so no request can attach in
        between; requests arriving during the block wait, then load (or fail to find the
        model) once it ends."""
        keys = self._keys(model)
        present = {r.id for r in self.scheduler.of(keys)}
        effects = self._feed(Remove(model, keys))
        for effect in effects:
            if isinstance(effect, Refuse):
                raise effect.error
        try:
            await self._await_stops(present)
            yield
        finally:
            self._feed(Removed(keys))

    async def close(self) -> None:
        """Stop every runner (and any load in progress); each child is reaped."""
        self._closed = True
        tasks = [t for t in (self._monitor, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._feed(Shutdown())
        for pending in self._requests.values():  # anyone still waiting on a grant
            if pending.future is not None and not pending.future.done():
                pending.future.set_exception(ShuttingDownError("switchboard is shutting down"))
        self._requests.clear()
        if self._stops:
            await asyncio.wait(set(self._stops.values()))


def _context_of(spec: LaunchSpec) -> ContextWindow:
    # The estimate parsed this header a moment ago (cached): usually a stat.
    return context_window(spec.model_path, spec.ctx_size, spec.parallel, spec.extra_args,
                          cached_header(spec.model_path))
