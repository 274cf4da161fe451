"""Which runner serves a request: every decision, and nothing else.

A state machine in the style of a syscall table: :meth:`Scheduler.handle` takes one event (a
request arrived or left, a runner is ready, exited or missed a health check, a timer fired,
memory was sampled) and the time, changes the state, and returns the effects the supervisor
(:mod:`runner.supervisor`) must carry out (grant, fail, prepare a load, spawn, drain, stop,
set a timer). It reads no clock, file or device and starts nothing, so its tests call it
synchronously, with no sleeps and no tasks. Semantics of Ollama's ``server/sched.go``
(choices in :mod:`runner.policy`):

- A request for a usable runner (ready, not draining, of its shape) is granted at once (the
  fast path), so traffic to loaded models never waits behind a load. Anything else joins a
  bounded queue; a full queue fails it with :class:`QueueFullError` (HTTP 503, Retry-After).
- One load at a time. Once everything servable is granted, the oldest remaining request's
  runner is prepared (its header estimated, memory sampled), then spawned, after making room
  by draining a victim if it does not fit.
- A draining runner takes no new requests: they queue behind the swap, which turns
  alternating traffic into batches instead of one load per request. It stops when its last
  request is released; nothing loads while a stop is in progress (its memory, VRAM included,
  is still being returned).
- Keep-alive starts when the last request is released (0 = stop then, negative = never); a
  request's ``keep_alive`` overrides the model's.
- Memory: a runner counts at its latest sample (what it holds now), else its estimate. What
  is remembered for its next load is its steady state, sampled as it turns ready, keyed by
  runner key and shape: never a later sample, which may be one request's peak (a ``n_probs``
  request took a 334 MiB runner to 1.08 GiB) or memory glibc kept after it. A model too
  large even alone is refused with both figures and nothing is drained, after one retry on
  its header's estimate if the refusal was on a remembered figure.
- A runner that exits leaves at once; the next request reloads it. One that misses
  ``health_strikes`` checks in a row is stopped with force (a hung process ignores SIGTERM).
- Runners are keyed by model and mode; a request whose shape (context, slots, GPU layers,
  arguments) differs drains the loaded one and reloads. The state holds several runners per
  key (copies): a request may ask for up to ``copies`` of its key (a model's ``replicas``,
  here one per GPU). It goes to the least busy usable one with a free slot; when every copy
  is full and fewer than ``copies`` run, it waits and another copy loads, unless that copy
  would have to evict another runner (then the full copies take it, as llama-server's own
  queue would). With ``copies`` reached, requests queue in the runners as before.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from runner.errors import (
    ModelInUseError,
    ModelTooLargeError,
    NoRoomError,
    QueueFullError,
    ShuttingDownError,
)
from runner.modes import RunnerMode
from runner.policy import RunnerView, expires_at, has_room, pick_victim
from runner.units import GiB, format_bytes

GPU_MARGIN = 1 * GiB  # per device, as llama-server's --fit keeps free


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


@dataclass(frozen=True)
class SchedulerConfig:
    max_loaded: int = 3  # runners at once (memory fitting applies on top)
    max_queue: int = 512  # requests waiting at once
    memory_budget: int | None = None  # bytes runners may use in all; None: the machine's
    health_strikes: int = 2  # failed /health checks in a row before a runner is killed
    # Seconds after a busy runner begins draining to make room during which new requests for
    # it still join it (they would otherwise wait out the swap, then cost a load of their own)
    swap_ride: float = 2.0


@dataclass(frozen=True)
class Memory:
    """A sample of the machine's memory: RAM, and each GPU a runner would use (total, free)."""

    total: int
    available: int
    gpus: tuple[tuple[int, int], ...] = ()


# -- events: what happened --------------------------------------------------------------------


@dataclass(frozen=True)
class Requested:
    request: int
    key: str
    model: str  # as the client named it, for messages
    shape: Shape
    keep_alive: float | None  # the request's own; None: ``default_keep_alive``
    default_keep_alive: float  # the model's
    copies: int = 1  # runners of this key and shape that may run at once
    # False in a fleet: a load that would wait for busy runners to drain is refused (503),
    # since another node may have room by the client's retry.
    wait_for_room: bool = True


@dataclass(frozen=True)
class Left:
    """A queued request's client went away before it was granted."""

    request: int


@dataclass(frozen=True)
class Released:
    """A granted request finished with its runner."""

    request: int


@dataclass(frozen=True)
class Prepared:
    key: str
    shape: Shape
    estimate: int  # bytes, from the GGUF header
    memory: Memory


@dataclass(frozen=True)
class PrepareFailed:
    key: str
    shape: Shape
    error: Exception


@dataclass(frozen=True)
class Ready:
    runner: int
    steady: int | None  # RSS + VRAM as it turned ready, before any request; None: unknown
    vram: int = 0


@dataclass(frozen=True)
class StartFailed:
    runner: int
    error: Exception


@dataclass(frozen=True)
class Exited:
    """A runner's process ended without being asked to."""

    runner: int


@dataclass(frozen=True)
class HealthChecked:
    runner: int
    ok: bool


@dataclass(frozen=True)
class Sampled:
    runner: int
    actual: int | None  # RSS + VRAM now
    vram: int = 0


@dataclass(frozen=True)
class TimerFired:
    runner: int
    at: float  # the expiry it was set for: a timer superseded since is ignored


@dataclass(frozen=True)
class Stopped:
    """A stop finished: the process is reaped and its memory reported free."""

    runner: int


@dataclass(frozen=True)
class Unload:
    keys: frozenset[str]


@dataclass(frozen=True)
class Remove:
    """Unload ``keys`` and keep them unloaded until :class:`Removed` (the model is being
    deleted); refused if any request is in flight, queued or loading for them."""

    model: str
    keys: frozenset[str]


@dataclass(frozen=True)
class Removed:
    keys: frozenset[str]


@dataclass(frozen=True)
class Shutdown:
    pass


Event = (Requested | Left | Released | Prepared | PrepareFailed | Ready | StartFailed | Exited
         | HealthChecked | Sampled | TimerFired | Stopped | Unload | Remove | Removed | Shutdown)


# -- effects: what the supervisor must do -----------------------------------------------------


@dataclass(frozen=True)
class Grant:
    request: int
    runner: int
    waited_for_load: bool  # the request queued before this runner was spawned


@dataclass(frozen=True)
class Fail:
    request: int
    error: Exception


@dataclass(frozen=True)
class Prepare:
    """Work out what loading ``key`` at ``shape`` needs (the GGUF's path and header estimate)
    and sample memory; answer with :class:`Prepared` or :class:`PrepareFailed`."""

    key: str
    shape: Shape
    request: int  # the oldest request waiting for it: its model's config says how


@dataclass(frozen=True)
class Spawn:
    """Start runner ``runner``; answer with :class:`Ready` or :class:`StartFailed`."""

    runner: int
    key: str
    shape: Shape
    need: int


@dataclass(frozen=True)
class Drain:
    """``runner`` takes no new requests and stops once its last is released."""

    runner: int
    reason: str
    in_flight: int


@dataclass(frozen=True)
class Stop:
    """Stop ``runner`` (SIGKILL if ``force``); then wait until ``vram`` bytes of GPU memory
    show as free again (the driver reports them late), and answer :class:`Stopped`."""

    runner: int
    reason: str
    force: bool = False
    vram: int = 0


@dataclass(frozen=True)
class Lost:
    """``runner`` left without being stopped (it exited); nothing is left to stop."""

    runner: int


@dataclass(frozen=True)
class Timer:
    """Answer :class:`TimerFired` at ``at`` for ``runner``; None cancels its timer."""

    runner: int
    at: float | None


@dataclass(frozen=True)
class Refuse:
    """The event itself is refused: raise ``error`` to whoever sent it."""

    error: Exception


@dataclass(frozen=True)
class Log:
    level: int
    message: str


Effect = Grant | Fail | Prepare | Spawn | Drain | Stop | Lost | Timer | Refuse | Log


# -- state ------------------------------------------------------------------------------------


@dataclass(eq=False)
class Runner:
    """One runner as the scheduler sees it."""

    id: int
    key: str
    shape: Shape
    keep_alive: float
    estimate: int  # what fitting assumed for its load: a remembered figure or the header's
    spawned_at: float
    ready: bool = False
    draining: bool = False
    actual: int | None = None  # the latest RSS + VRAM sample
    vram: int = 0
    refs: int = 0
    expires_at: float | None = None
    strikes: int = 0
    ride_until: float | None = None  # drained to make room: new requests join it till then

    @property
    def usable(self) -> bool:
        return self.ready and not self.draining

    @property
    def need(self) -> int:
        """What fitting counts for it while loaded: its latest sample (what it really holds,
        a request's peak included), else its estimate."""
        return self.actual if self.actual is not None else self.estimate


@dataclass(eq=False)
class Waiting:
    request: int
    key: str
    model: str
    shape: Shape
    keep_alive: float | None
    default_keep_alive: float
    queued_at: float
    copies: int = 1
    wait_for_room: bool = True

    @property
    def wants(self) -> tuple[str, Shape]:
        return (self.key, self.shape)


@dataclass
class _Effects:
    out: list[Effect] = field(default_factory=list)

    def __call__(self, effect: Effect) -> None:
        self.out.append(effect)


class Scheduler:
    """The decisions; :meth:`handle` is the only way in."""

    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        self.runners: dict[int, Runner] = {}  # starting and loaded (not stopping)
        self.queue: list[Waiting] = []
        self.granted: dict[int, int] = {}  # request -> runner
        self.preparing: tuple[str, Shape] | None = None
        # runners told to stop and not gone yet -> (memory they hold, GPU memory they hold)
        self.stopping: dict[int, tuple[int, int]] = {}
        # a load found its memory held by runners still exiting: nothing more is prepared
        # until one of them is gone (their Stopped)
        self.awaiting_exit = False
        # (runner key, shape) -> steady-state memory of its last runner, for its next fit
        self.learned: dict[tuple[str, Shape], int] = {}
        # keys kept unloaded while their model is removed, by removals under way
        self.held: Counter[str] = Counter()
        # (key, shape) whose next copy found no room without evicting: its full copies take
        # its requests until a runner stops and frees memory.
        self.no_room: set[tuple[str, Shape]] = set()
        self.closed = False
        self.loads = 0
        self._next_runner = 0

    # -- queries (pure reads of the state) ----------------------------------------------------

    @property
    def queue_depth(self) -> int:
        return len(self.queue)

    @property
    def loading(self) -> bool:
        return self.preparing is not None or any(not r.ready for r in self.runners.values())

    def of(self, keys: Iterable[str]) -> list[Runner]:
        wanted = set(keys)
        return [r for r in self.runners.values() if r.key in wanted]

    def fits(self, memory: Memory) -> tuple[int, int]:
        """(budget, free): bytes runners may use in all, and what is left beside loaded ones.
        Each GPU counts less llama-server's margin: it places as many layers there as fit
        and the rest in RAM."""
        device_total = sum(max(total - GPU_MARGIN, 0) for total, _ in memory.gpus)
        device_free = sum(max(free - GPU_MARGIN, 0) for _, free in memory.gpus)
        budget = self.config.memory_budget or memory.total + device_total
        held = sum(r.need for r in self.runners.values())
        held += sum(need for need, _ in self.stopping.values())  # theirs until they exit
        free = budget - held
        if self.config.memory_budget is None:
            free = min(free, memory.available + device_free)  # others use this machine too
        return budget, free

    def room(self, memory: Memory) -> int:
        """Bytes a new runner could have now without waiting for a request: what is free,
        plus what idle runners hold (they may be unloaded for it). What a fleet routes by."""
        _, free = self.fits(memory)
        idle = [r for r in self.runners.values() if r.refs == 0]
        if not has_room(len(self.runners) - len(idle), self.config.max_loaded):
            return 0
        return max(free + self._exiting() + sum(r.need for r in idle), 0)

    def _exiting(self) -> int:
        """Memory held by runners told to stop that have not exited yet: back soon."""
        return sum(held for held, _ in self.stopping.values())

    # -- the one way in -----------------------------------------------------------------------

    def handle(self, event: Event, now: float) -> list[Effect]:
        emit = _Effects()
        match event:
            case Requested():
                self._requested(event, now, emit)
            case Left():
                self.queue = [w for w in self.queue if w.request != event.request]
            case Released():
                self._released(event.request, now, emit)
            case Prepared():
                self._prepared(event, now, emit)
            case PrepareFailed():
                self.preparing = None
                self._fail_wanting((event.key, event.shape), event.error, emit)
            case Ready():
                self._ready(event, now, emit)
            case StartFailed():
                self._start_failed(event, emit)
            case Exited():
                self._exited(event.runner, emit)
            case HealthChecked():
                self._health(event, emit)
            case Sampled():
                runner = self.runners.get(event.runner)
                if runner is not None and runner.ready:
                    runner.vram = event.vram
                    if event.actual is not None:
                        runner.actual = event.actual
            case TimerFired():
                runner = self.runners.get(event.runner)
                if (runner is not None and runner.refs == 0 and runner.expires_at == event.at
                        and runner.expires_at is not None):
                    self._stop(runner, "keep-alive expired", emit)
            case Stopped():
                self.stopping.pop(event.runner, None)
                self.awaiting_exit = False
                self.no_room.clear()  # its memory is back: another copy may fit now
            case Unload():
                for runner in self.of(event.keys):
                    if runner.ready:
                        self._drain(runner, "on request", emit)
            case Remove():
                self._remove(event, emit)
            case Removed():
                self.held.subtract(event.keys)
                self.held += Counter()  # drops the keys no removal holds any more
            case Shutdown():
                self._shutdown(emit)
        if not self.closed:
            self._dispatch(now, emit)
        return emit.out

    # -- requests -----------------------------------------------------------------------------

    def _usable(self, key: str, shape: Shape) -> Runner | None:
        """The least busy usable runner of ``key`` at ``shape``, if any."""
        best = None
        for runner in self.runners.values():
            if runner.key == key and runner.shape == shape and runner.usable and (
                    best is None or runner.refs < best.refs):
                best = runner
        return best

    def _rideable(self, key: str, shape: Shape, now: float) -> Runner | None:
        """A runner of ``key`` draining to make room that a new request may still join: it is
        busy anyway, and joining costs the waiting model at most ``swap_ride`` more of its
        requests' service, where waiting out the swap would cost a load."""
        for runner in self.runners.values():
            if (runner.key == key and runner.shape == shape and runner.ready
                    and runner.draining and runner.refs > 0 and runner.ride_until is not None
                    and now <= runner.ride_until):
                return runner
        return None

    def _takes(self, runner: Runner | None, key: str, shape: Shape, copies: int) -> bool:
        """Whether ``runner`` (the least busy usable copy) takes a request now: it has a free
        slot, or no other copy may start (``copies`` run, or none fits beside the rest)."""
        if runner is None:
            return False
        if runner.refs < shape.parallel or copies <= 1 or (key, shape) in self.no_room:
            return True
        # A copy still loading is waited for: it is coming, and the full ones stay full.
        ready = sum(1 for r in self.runners.values()
                    if r.key == key and r.shape == shape and r.usable)
        return ready >= copies

    def _requested(self, event: Requested, now: float, emit: _Effects) -> None:
        if self.closed:
            emit(Fail(event.request, ShuttingDownError("switchboard is shutting down")))
            return
        runner = self._usable(event.key, event.shape)
        if runner is not None and self._takes(runner, event.key, event.shape, event.copies):
            self._attach(runner, event.request, event.keep_alive, False, emit)
            return
        rider = self._rideable(event.key, event.shape, now)
        if rider is not None:  # its runner is being swapped out but still busy: join it
            self._attach(rider, event.request, event.keep_alive, False, emit)
            return
        if len(self.queue) >= self.config.max_queue:
            emit(Fail(event.request, QueueFullError(self.config.max_queue)))
            return
        self.queue.append(Waiting(event.request, event.key, event.model, event.shape,
                                  event.keep_alive, event.default_keep_alive, now,
                                  event.copies, event.wait_for_room))

    def _attach(self, runner: Runner, request: int, keep_alive: float | None,
                waited_for_load: bool, emit: _Effects) -> None:
        runner.refs += 1
        if keep_alive is not None:
            runner.keep_alive = keep_alive
        if runner.expires_at is not None:
            runner.expires_at = None
            emit(Timer(runner.id, None))
        self.granted[request] = runner.id
        emit(Grant(request, runner.id, waited_for_load))

    def _released(self, request: int, now: float, emit: _Effects) -> None:
        runner = self.runners.get(self.granted.pop(request, -1))
        if runner is None:
            return  # it is gone (exited, or stopped with force)
        runner.refs -= 1
        if runner.refs == 0:
            self._idle(runner, now, emit)

    def _idle(self, runner: Runner, now: float, emit: _Effects) -> None:
        if runner.draining or runner.keep_alive == 0:
            self._stop(runner, "drained" if runner.draining else "keep_alive 0", emit)
            return
        runner.expires_at = expires_at(runner.keep_alive, now)
        if runner.expires_at is not None:
            emit(Timer(runner.id, runner.expires_at))

    # -- the dispatcher -----------------------------------------------------------------------

    def _dispatch(self, now: float, emit: _Effects) -> None:
        """Grant what can be granted, then start the next load if nothing is in the way."""
        waiting = []
        for pending in self.queue:
            runner = self._usable(pending.key, pending.shape)
            if self._takes(runner, pending.key, pending.shape, pending.copies):
                assert runner is not None
                self._attach(runner, pending.request, pending.keep_alive,
                             runner.spawned_at >= pending.queued_at, emit)
            else:
                waiting.append(pending)
        self.queue = waiting
        if self.loading or self.awaiting_exit or any(v for _, v in self.stopping.values()):
            # One load at a time. A CPU runner that is stopping holds its memory in the fit
            # until it exits (a load beside its exit is counted against it, not made to wait
            # for it); device memory shows as free only some time after its runner exits.
            return
        # What still waits needs a load: no runner of its shape, or every copy full with
        # another allowed. The oldest first; a model being removed stays unloaded until then.
        wanted = next((w.wants for w in waiting if w.key not in self.held), None)
        if wanted is None:
            return
        key, shape = wanted
        present = [r for r in self.runners.values() if r.key == key]
        if any(r.shape != shape and not r.draining for r in present):
            for runner in present:
                if runner.shape != shape and not runner.draining:
                    self._drain(runner, "its requests need other options", emit)  # a reload
            return
        first = next(w for w in waiting if w.wants == wanted)
        if sum(1 for r in present if r.shape == shape and not r.draining) >= first.copies:
            return  # as many as allowed, all busy loading or draining: wait for them
        if any(r.draining for r in self.runners.values()):
            return  # a swap is under way; its stop wakes us
        self.preparing = wanted
        emit(Prepare(key, shape, first.request))

    def _prepared(self, event: Prepared, now: float, emit: _Effects) -> None:
        wanted = (event.key, event.shape)
        self.preparing = None
        first = next((w for w in self.queue if w.wants == wanted), None)
        if first is None or event.key in self.held or self.closed:
            return  # its requests left, or its removal began: look again
        learned = self.learned.get(wanted)
        need = learned if learned is not None else event.estimate
        budget, free = self.fits(event.memory)
        exiting = self._exiting()
        if need > free and need <= free + exiting:
            self.awaiting_exit = True  # what they hold comes back as they exit
            return
        if self._usable(*wanted) is not None and (
                need > free or not has_room(len(self.runners), self.config.max_loaded)):
            # Another copy is worth a load, never an eviction: the copies running take it.
            self.no_room.add(wanted)
            emit(Log(logging.INFO, f"{event.key}: no room for another copy beside the "
                     f"loaded runners ({format_bytes(max(free, 0))} free); its copies "
                     "running take its requests"))
            return  # handle()'s dispatch now grants its waiters to them
        if learned is not None and (need > budget
                                    or (need > free + exiting and not self.runners)):
            # A remembered figure can be wrong (another build, a runner that held more than
            # usual): refuse only on the header's estimate; this load is measured anew.
            del self.learned[wanted]
            need = event.estimate
            emit(Log(logging.WARNING, f"{event.key}: remembered {format_bytes(learned)} does "
                     f"not fit in {format_bytes(max(free, 0))}; retrying with its estimate, "
                     f"{format_bytes(need)}"))
        if need > budget:  # even alone: drain none
            self._fail_wanting(wanted, ModelTooLargeError(first.model, need, budget), emit)
            return
        if need > free and need <= free + exiting:  # the estimate, after a learned figure
            self.awaiting_exit = True
            return
        if not has_room(len(self.runners), self.config.max_loaded) or need > free:
            if not self.runners:
                self._fail_wanting(wanted, ModelTooLargeError(first.model, need, free), emit)
                return
            if (not self._room_without_waiting(wanted, need, free, emit)
                    and not any(w.wants == wanted for w in self.queue)):
                return  # every waiter would rather be refused than wait: they were
            waits = any(w.wants == wanted and w.wait_for_room for w in self.queue)
            views = [RunnerView(str(r.id), r.refs, r.keep_alive)
                     for r in self.runners.values()
                     if not r.draining and (waits or r.refs == 0)]
            # Prefer a victim no queued request wants: it would only be reloaded at once.
            spare = {str(r.id) for r in self.runners.values()
                     if any(w.key == r.key for w in self.queue)}
            victim = pick_victim(views, spare=frozenset(spare))
            if victim is not None:
                ride = now + self.config.swap_ride if self.config.swap_ride > 0 else None
                self._drain(self.runners[int(victim)], "to make room", emit, ride)
            return
        self._next_runner += 1
        runner = Runner(self._next_runner, event.key, event.shape,
                        first.keep_alive if first.keep_alive is not None
                        else first.default_keep_alive, need, now)
        self.runners[runner.id] = runner
        self.loads += 1
        emit(Spawn(runner.id, event.key, event.shape, need))

    def _ready(self, event: Ready, now: float, emit: _Effects) -> None:
        runner = self.runners.get(event.runner)
        if runner is None:
            return
        runner.ready = True
        runner.vram = event.vram
        runner.actual = event.steady
        if event.steady is not None:  # its steady state: the one figure worth remembering
            self.learned[(runner.key, runner.shape)] = event.steady
        self._dispatch(now, emit)  # grant its waiters before the keep-alive decision
        if runner.refs == 0 and runner.id in self.runners:
            self._idle(runner, now, emit)  # everyone who wanted it left during the load

    def _start_failed(self, event: StartFailed, emit: _Effects) -> None:
        runner = self.runners.pop(event.runner, None)
        if runner is None:
            return
        if self._usable(runner.key, runner.shape) is not None:
            # Another copy failed; the running ones take its requests, as with no room.
            self.no_room.add((runner.key, runner.shape))
            emit(Log(logging.WARNING, f"{runner.key}: another copy failed to start "
                     f"({event.error}); its running copies take its requests"))
            return
        self._fail_wanting((runner.key, runner.shape), event.error, emit)

    def _room_without_waiting(self, wanted: tuple[str, Shape], need: int, free: int,
                              emit: _Effects) -> bool:
        """Whether unloading idle runners alone makes room for ``need``. If not, the waiters
        that would rather be refused than wait for busy runners (a fleet's) are refused."""
        idle = [r for r in self.runners.values() if r.refs == 0]
        room = free + self._exiting() + sum(r.need for r in idle)
        if need <= room and has_room(len(self.runners) - len(idle), self.config.max_loaded):
            return True
        refused = [w for w in self.queue if w.wants == wanted and not w.wait_for_room]
        for pending in refused:
            self.queue.remove(pending)
            emit(Fail(pending.request, NoRoomError(pending.model, need, max(room, 0))))
        return False

    def _fail_wanting(self, wanted: tuple[str, Shape], error: Exception,
                      emit: _Effects) -> None:
        for pending in [w for w in self.queue if w.wants == wanted]:
            self.queue.remove(pending)
            emit(Fail(pending.request, error))

    # -- runners leaving ----------------------------------------------------------------------

    def _drain(self, runner: Runner, reason: str, emit: _Effects,
               ride: float | None = None) -> None:
        """Take ``runner`` out of use; its key's new requests still join it until ``ride``
        (a swap's, to make room; None for an unload or a reload, which take no riders)."""
        runner.draining = True
        runner.ride_until = ride
        emit(Drain(runner.id, reason, runner.refs))
        if runner.refs == 0:
            self._stop(runner, reason, emit)
        elif runner.expires_at is not None:
            runner.expires_at = None
            emit(Timer(runner.id, None))

    def _stop(self, runner: Runner, reason: str, emit: _Effects, force: bool = False) -> None:
        del self.runners[runner.id]
        self.no_room.clear()  # memory comes back: another copy may fit now
        self.stopping[runner.id] = (runner.need, runner.vram)
        if runner.expires_at is not None:
            runner.expires_at = None
            emit(Timer(runner.id, None))
        emit(Stop(runner.id, reason, force, runner.vram))

    def _exited(self, runner_id: int, emit: _Effects) -> None:
        runner = self.runners.get(runner_id)
        if runner is None or not runner.ready:
            return  # being stopped, or still starting (its start fails instead)
        del self.runners[runner_id]
        self.no_room.clear()
        if runner.expires_at is not None:
            emit(Timer(runner_id, None))
        emit(Lost(runner_id))
        emit(Log(logging.WARNING, f"runner for {runner.key} left the loaded set; the next "
                 "request reloads it"))

    def _health(self, event: HealthChecked, emit: _Effects) -> None:
        runner = self.runners.get(event.runner)
        if runner is None or not runner.ready:
            return
        runner.strikes = 0 if event.ok else runner.strikes + 1
        if runner.strikes >= self.config.health_strikes:
            emit(Log(logging.WARNING, f"runner for {runner.key} failed {runner.strikes} "
                     "health checks; killing it"))
            self._stop(runner, "health checks failed", emit, force=True)

    def _remove(self, event: Remove, emit: _Effects) -> None:
        present = self.of(event.keys)
        users = (sum(r.refs for r in present)
                 + sum(1 for w in self.queue if w.key in event.keys))
        if users:
            emit(Refuse(ModelInUseError(event.model, f"{users} request"
                                        f"{'s' if users > 1 else ''} in flight or waiting "
                                        "for it")))
            return
        if any(not r.ready for r in present) or (
                self.preparing is not None and self.preparing[0] in event.keys):
            emit(Refuse(ModelInUseError(event.model, "it is loading")))
            return
        self.held.update(event.keys)
        for runner in present:
            self._stop(runner, "removing the model", emit)

    def _shutdown(self, emit: _Effects) -> None:
        self.closed = True
        for pending in self.queue:
            emit(Fail(pending.request, ShuttingDownError("switchboard is shutting down")))
        self.queue.clear()
        self.preparing = None
        for runner in list(self.runners.values()):
            self._stop(runner, "shutdown", emit)
