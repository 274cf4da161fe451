"""The scheduler's decisions, called synchronously: events in, effects out, time passed in.

No tasks, no sleeps, no processes: each test feeds events and reads the effects.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import TypeVar

from runner.errors import (
    ModelInUseError,
    ModelTooLargeError,
    NoRoomError,
    QueueFullError,
    ShuttingDownError,
)
from runner.modes import RunnerMode
from runner.scheduler import (
    Drain,
    Effect,
    Exited,
    Fail,
    Grant,
    HealthChecked,
    Left,
    Lost,
    Memory,
    Prepare,
    Prepared,
    Ready,
    Refuse,
    Released,
    Remove,
    Removed,
    Requested,
    Runner,
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
)

MiB = 1 << 20
T = TypeVar("T")
PLENTY = Memory(64 << 30, 64 << 30)
SHAPE = Shape(4096, 1, "auto", (), RunnerMode.CHAT)


class Driver:
    """Feeds one scheduler and answers its Prepare/Spawn/Stop effects as a supervisor would,
    immediately, so a test reads as a sequence of what happened."""

    def __init__(self, config: SchedulerConfig | None = None,
                 memory: Memory = PLENTY, estimate: int = 100 * MiB) -> None:
        self.scheduler = Scheduler(config or SchedulerConfig())
        self.memory = memory
        self.estimates: dict[str, int] = {}
        self.estimate = estimate
        self.now = 1000.0
        self.ids = 0
        self.effects: list[Effect] = []

    def feed(self, event: object) -> list[Effect]:
        out = self.scheduler.handle(event, self.now)  # type: ignore[arg-type]
        self.effects += out
        return out

    def request(self, key: str, keep_alive: float | None = None, shape: Shape = SHAPE,
                default_keep_alive: float = 300.0, copies: int = 1,
                wait_for_room: bool = True) -> int:
        self.ids += 1
        self.feed(Requested(self.ids, key, key, shape, keep_alive, default_keep_alive, copies,
                            wait_for_room))
        return self.ids

    def load(self, key: str, shape: Shape = SHAPE, steady: int | None = None) -> int:
        """Answer the pending Prepare and the Spawn it leads to; the spawned runner's id."""
        self.feed(Prepared(key, shape, self.estimates.get(key, self.estimate), self.memory))
        spawn = self.last(Spawn)
        self.feed(Ready(spawn.runner, steady))
        return spawn.runner

    def last(self, kind: type[T]) -> T:
        found = [e for e in self.effects if isinstance(e, kind)]
        assert found, f"no {kind.__name__} in {self.effects}"
        return found[-1]

    def all(self, kind: type[T]) -> list[T]:
        return [e for e in self.effects if isinstance(e, kind)]


def test_a_request_for_a_loaded_runner_is_granted_in_the_same_event() -> None:
    d = Driver()
    first = d.request("a")
    assert d.last(Prepare).key == "a"
    runner = d.load("a")
    assert d.last(Grant) == Grant(first, runner, True)
    out = d.feed(Requested(99, "a", "a", SHAPE, None, 300.0))
    assert Grant(99, runner, False) in out  # the fast path: no Prepare, no queue
    assert not [e for e in out if isinstance(e, Prepare | Spawn)]


def test_one_load_at_a_time_and_loaded_traffic_never_waits_behind_it() -> None:
    d = Driver()
    d.request("a")
    a = d.load("a")
    d.request("b")
    assert d.last(Prepare).key == "b"
    d.request("c")  # waits: b is being prepared
    assert [p.key for p in d.all(Prepare)] == ["a", "b"]
    out = d.feed(Requested(50, "a", "a", SHAPE, None, 300.0))
    assert Grant(50, a, False) in out


def test_a_full_queue_fails_the_request_at_once() -> None:
    d = Driver(SchedulerConfig(max_queue=1))
    d.request("a")
    second = d.request("a")
    fail = d.last(Fail)
    assert fail.request == second and isinstance(fail.error, QueueFullError)


def test_keep_alive_zero_stops_the_runner_when_its_last_request_is_released() -> None:
    d = Driver()
    req = d.request("a", keep_alive=0)
    runner = d.load("a")
    assert not d.all(Stop)
    d.feed(Released(req))
    assert d.last(Stop) == Stop(runner, "keep_alive 0")


def test_keep_alive_sets_a_timer_from_the_release_and_its_firing_stops_the_runner() -> None:
    d = Driver()
    req = d.request("a", keep_alive=30)
    runner = d.load("a")
    d.now = 1010.0
    d.feed(Released(req))
    assert d.last(Timer) == Timer(runner, 1040.0)
    d.now = 1040.0
    assert Stop(runner, "keep-alive expired") in d.feed(TimerFired(runner, 1040.0))


def test_a_timer_superseded_by_a_new_request_is_ignored() -> None:
    d = Driver()
    req = d.request("a", keep_alive=30)
    runner = d.load("a")
    d.feed(Released(req))
    at = d.last(Timer).at
    assert at is not None
    d.request("a")  # attaches: the timer is cancelled
    assert d.last(Timer) == Timer(runner, None)
    assert not [e for e in d.feed(TimerFired(runner, at)) if isinstance(e, Stop)]


def test_a_negative_keep_alive_sets_no_timer() -> None:
    d = Driver()
    req = d.request("a", keep_alive=-1)
    d.load("a")
    d.feed(Released(req))
    assert not [t for t in d.all(Timer) if t.at is not None]


def test_alternating_traffic_costs_one_load_per_switch_late_arrivals_riding_the_drain() -> None:
    d = Driver(SchedulerConfig(max_loaded=1, swap_ride=2.0))
    first = d.request("a")
    a = d.load("a")
    b1 = d.request("b")
    d.feed(Prepared("b", SHAPE, 100 * MiB, PLENTY))
    assert d.last(Drain) == Drain(a, "to make room", 1)  # busy: drained, never killed
    d.now += 1.5  # within the ride: a late request for a joins it rather than reload it later
    late_a = d.request("a")
    assert [g.runner for g in d.all(Grant) if g.request == late_a] == [a]
    b2 = d.request("b")
    d.feed(Released(first))
    assert not d.all(Stop)  # the rider still holds it
    d.feed(Released(late_a))
    assert d.last(Stop).runner == a
    b = d.load("b")  # its exit is counted in the fit, not waited for (a CPU runner)
    assert {g.request for g in d.all(Grant) if g.runner == b} == {b1, b2}
    assert d.scheduler.loads == 2  # one per switch


def test_past_the_ride_a_late_request_queues_behind_the_swap_so_the_other_model_waits_bounded(
) -> None:
    d = Driver(SchedulerConfig(max_loaded=1, swap_ride=2.0))
    first = d.request("a")
    a = d.load("a")
    b1 = d.request("b")
    d.feed(Prepared("b", SHAPE, 100 * MiB, PLENTY))
    d.now += 2.5  # the ride is over: b's wait is bounded by it plus what rode
    late_a = d.request("a")
    assert not [g for g in d.all(Grant) if g.request == late_a]
    d.feed(Released(first))
    assert d.last(Stop).runner == a
    b = d.load("b")
    assert [g.runner for g in d.all(Grant) if g.request == b1] == [b]
    assert late_a in [w.request for w in d.scheduler.queue]  # a again after b: a switch


def test_an_unload_on_request_or_a_reload_for_other_options_takes_no_riders() -> None:
    d = Driver(SchedulerConfig(max_loaded=1))
    first = d.request("a")
    a = d.load("a")
    d.feed(Unload(frozenset({"a"})))
    late = d.request("a")
    assert not [g for g in d.all(Grant) if g.request == late]
    d.feed(Released(first))
    assert d.last(Stop).runner == a


def test_a_gpu_runners_exit_is_waited_for_before_the_next_load() -> None:
    d = Driver(SchedulerConfig(max_loaded=1))
    first = d.request("a")
    a = d.load("a")
    d.feed(Sampled(a, 150 * MiB, 64 * MiB))  # it holds device memory
    d.feed(Released(first))
    d.request("b")
    d.feed(Prepared("b", SHAPE, 100 * MiB, PLENTY))
    assert d.last(Stop).runner == a
    spawns, prepares = len(d.all(Spawn)), len(d.all(Prepare))
    d.feed(Stopped(a))  # nothing was prepared while its memory returned: now it is
    assert len(d.all(Prepare)) == prepares + 1
    d.load("b")
    assert len(d.all(Spawn)) == spawns + 1


def test_a_load_beside_a_stopping_cpu_runner_waits_only_if_its_memory_is_needed() -> None:
    d = Driver(SchedulerConfig(max_loaded=2, memory_budget=150 * MiB))
    first = d.request("a")
    a = d.load("a")
    d.feed(Released(first))
    d.request("b")
    d.feed(Prepared("b", SHAPE, 100 * MiB, PLENTY))  # no room beside a: a goes
    assert d.last(Stop).runner == a
    spawns, prepares = len(d.all(Spawn)), len(d.all(Prepare))
    d.feed(Prepared("b", SHAPE, 100 * MiB, PLENTY))  # a still exiting: its 100 MiB held
    assert len(d.all(Spawn)) == spawns and not d.all(Fail)
    assert len(d.all(Prepare)) == prepares  # it waits for the exit; it does not ask again
    d.feed(Stopped(a))
    d.load("b")
    assert len(d.all(Spawn)) == spawns + 1


def test_a_copy_that_waited_for_an_exit_loads_once_the_memory_is_back() -> None:
    d = Driver(SchedulerConfig(max_loaded=3, memory_budget=250 * MiB))
    first = d.request("c")
    c = d.load("c")
    d.feed(Released(first))
    d.request("m", copies=2)
    m = d.load("m")
    d.request("m", copies=2)  # a full copy, another allowed: a second copy wanted
    d.feed(Unload(frozenset({"c"})))  # c goes: its 100 MiB held until it exits
    assert d.last(Stop).runner == c
    d.feed(Prepared("m", SHAPE, 100 * MiB, PLENTY))
    assert d.scheduler.no_room == set()  # waiting for c's exit, not "no room"
    d.feed(Stopped(c))
    d.load("m")
    assert len([s for s in d.all(Spawn) if s.key == "m"]) == 2 and m in d.scheduler.runners


def test_an_unload_of_a_runner_drained_for_a_swap_ends_its_ride() -> None:
    d = Driver(SchedulerConfig(max_loaded=1, swap_ride=2.0))
    first = d.request("a")
    a = d.load("a")
    d.request("b")
    d.feed(Prepared("b", SHAPE, 100 * MiB, PLENTY))  # drained for the swap: riders welcome
    d.feed(Unload(frozenset({"a"})))  # then unloaded on request: none
    late = d.request("a")
    assert not [g for g in d.all(Grant) if g.request == late]
    d.feed(Released(first))
    assert d.last(Stop).runner == a


def test_a_fleet_load_that_would_wait_for_a_busy_runner_is_refused_with_no_room() -> None:
    d = Driver(SchedulerConfig(memory_budget=150 * MiB))
    d.request("a")
    a = d.load("a")  # busy: its request is still in flight
    assert d.scheduler.room(PLENTY) == 50 * MiB
    b = d.request("b", wait_for_room=False)
    d.feed(Prepared("b", SHAPE, 100 * MiB, PLENTY))
    fail = d.last(Fail)
    assert fail.request == b and isinstance(fail.error, NoRoomError)
    assert fail.error.retry_after > 0 and not d.all(Drain)  # a keeps serving, undisturbed
    assert d.scheduler.queue == [] and a in d.scheduler.runners


def test_a_fleet_load_unloads_an_idle_runner_for_room_as_any_load_does() -> None:
    d = Driver(SchedulerConfig(memory_budget=150 * MiB))
    first = d.request("a")
    a = d.load("a")
    d.feed(Released(first))  # idle: it may go
    assert d.scheduler.room(PLENTY) == 150 * MiB
    d.request("b", wait_for_room=False)
    d.feed(Prepared("b", SHAPE, 100 * MiB, PLENTY))
    assert d.last(Stop).runner == a and not d.all(Fail)


def test_a_load_that_may_wait_still_drains_the_busy_runner_beside_a_fleet_one() -> None:
    d = Driver(SchedulerConfig(max_loaded=1))
    d.request("a")
    a = d.load("a")
    assert d.scheduler.room(PLENTY) == 0  # the count cap, held by a busy runner
    refused = d.request("b", wait_for_room=False)
    waits = d.request("b")
    d.feed(Prepared("b", SHAPE, 100 * MiB, PLENTY))
    assert [f.request for f in d.all(Fail)] == [refused]
    assert d.last(Drain) == Drain(a, "to make room", 1)
    assert [w.request for w in d.scheduler.queue] == [waits]


def test_a_model_too_large_even_alone_is_refused_and_drains_nothing() -> None:
    d = Driver(SchedulerConfig(memory_budget=500 * MiB))
    d.request("a")
    d.load("a")
    big = d.request("b")
    d.feed(Prepared("b", SHAPE, 600 * MiB, PLENTY))
    fail = d.last(Fail)
    assert fail.request == big and isinstance(fail.error, ModelTooLargeError)
    assert not d.all(Drain)


def test_learned_memory_is_kept_by_runner_key_and_shape() -> None:
    d = Driver()
    d.request("m")
    d.load("m", steady=300 * MiB)
    d.request("m+embeddings", shape=Shape(4096, 1, "auto", (), RunnerMode.EMBEDDINGS))
    embed_shape = Shape(4096, 1, "auto", (), RunnerMode.EMBEDDINGS)
    d.feed(Prepared("m+embeddings", embed_shape, 50 * MiB, PLENTY))
    assert d.last(Spawn).need == 50 * MiB  # not the chat runner's 300 MiB
    assert d.scheduler.learned == {("m", SHAPE): 300 * MiB}


def test_a_learned_figure_that_does_not_fit_is_dropped_and_the_estimate_used() -> None:
    d = Driver(SchedulerConfig(memory_budget=500 * MiB))
    d.scheduler.learned[("a", SHAPE)] = 900 * MiB  # e.g. another build's
    d.request("a")
    d.feed(Prepared("a", SHAPE, 100 * MiB, PLENTY))
    assert d.last(Spawn).need == 100 * MiB
    assert ("a", SHAPE) not in d.scheduler.learned


def test_a_request_of_another_shape_drains_the_runner_and_reloads() -> None:
    d = Driver()
    first = d.request("a")
    a = d.load("a")
    bigger = Shape(8192, 1, "auto", (), RunnerMode.CHAT)
    d.request("a", shape=bigger)
    assert d.last(Drain) == Drain(a, "its requests need other options", 1)
    d.feed(Released(first))
    d.feed(Stopped(a))
    assert d.last(Prepare).shape == bigger


def test_one_missed_health_check_is_forgiven_two_in_a_row_kill() -> None:
    d = Driver()
    d.request("a")
    a = d.load("a")
    d.feed(HealthChecked(a, False))
    d.feed(HealthChecked(a, True))
    d.feed(HealthChecked(a, False))
    assert not d.all(Stop)
    d.feed(HealthChecked(a, False))
    assert d.last(Stop) == Stop(a, "health checks failed", force=True)


def test_a_runner_that_exits_leaves_and_the_next_request_reloads_it() -> None:
    d = Driver()
    req = d.request("a")
    a = d.load("a")
    d.feed(Released(req))
    assert Lost(a) in d.feed(Exited(a))
    d.request("a")
    assert len(d.all(Prepare)) == 2


def test_a_failed_start_fails_every_waiter_and_the_next_request_retries() -> None:
    d = Driver()
    one, two = d.request("a"), d.request("a")
    d.feed(Prepared("a", SHAPE, MiB, PLENTY))
    d.feed(StartFailed(d.last(Spawn).runner, RuntimeError("boom")))
    assert {f.request for f in d.all(Fail)} == {one, two}
    d.request("a")
    assert len(d.all(Prepare)) == 2


def test_a_queued_request_that_leaves_loads_nothing() -> None:
    d = Driver()
    d.request("a")
    d.load("a")
    gone = d.request("b")
    d.feed(Left(gone))
    d.feed(Prepared("b", SHAPE, MiB, PLENTY))
    assert len(d.all(Spawn)) == 1


def test_removing_a_model_in_use_is_refused_and_changes_nothing() -> None:
    d = Driver()
    d.request("a")
    a = d.load("a")
    out = d.feed(Remove("a", frozenset({"a"})))
    assert any(isinstance(e, Refuse) and isinstance(e.error, ModelInUseError) for e in out)
    assert a in d.scheduler.runners and not d.all(Stop)


def test_an_idle_model_being_removed_is_stopped_and_held_until_the_removal_ends() -> None:
    d = Driver()
    req = d.request("a", keep_alive=-1)
    a = d.load("a")
    d.feed(Released(req))
    d.feed(Remove("a", frozenset({"a"})))
    assert d.last(Stop) == Stop(a, "removing the model")
    d.feed(Stopped(a))
    d.request("a")
    assert len(d.all(Prepare)) == 1  # held
    d.feed(Removed(frozenset({"a"})))
    assert len(d.all(Prepare)) == 2


def test_shutdown_fails_the_queue_and_stops_every_runner() -> None:
    d = Driver()
    d.request("a")
    a = d.load("a")
    waiting = d.request("b")
    out = d.feed(Shutdown())
    assert any(isinstance(e, Fail) and e.request == waiting
               and isinstance(e.error, ShuttingDownError) for e in out)
    assert Stop(a, "shutdown") in out


def test_requests_go_to_the_least_busy_of_several_runners_of_a_model() -> None:
    d = Driver()
    d.request("a")
    first = d.load("a")
    # A second copy of the same key and shape, as a model's replicas place one.
    d.scheduler.runners[77] = Runner(77, "a", SHAPE, 300.0, MiB, d.now, ready=True)
    assert len(d.scheduler.of(["a"])) == 2
    d.request("a")
    assert d.last(Grant).runner == 77  # first holds one request, the replica none
    d.request("a")
    assert d.last(Grant).runner in {first, 77}
    assert sorted(r.refs for r in d.scheduler.of(["a"])) == [1, 2]


def test_a_request_finding_every_copy_full_loads_another_up_to_its_copies() -> None:
    d = Driver()
    d.request("a", copies=2)
    first = d.load("a")
    waiting = d.request("a", copies=2)  # the one slot is taken: another copy is wanted
    assert d.last(Prepare).key == "a" and waiting not in [g.request for g in d.all(Grant)]
    second = d.load("a")
    assert second != first and d.last(Grant) == Grant(waiting, second, True)
    # Two copies run, both full: the third rides the least busy rather than a third load.
    third = d.request("a", copies=2)
    assert d.last(Grant).request == third and d.scheduler.loads == 2


def test_a_waiting_request_takes_the_slot_a_copy_frees_before_its_new_copy_is_ready() -> None:
    d = Driver()
    held = d.request("a", copies=2)
    first = d.load("a")
    waiting = d.request("a", copies=2)
    assert d.last(Prepare).key == "a"
    d.feed(Released(held))
    assert (d.last(Grant).request, d.last(Grant).runner) == (waiting, first)


def test_one_copy_allowed_queues_in_the_runner_as_before() -> None:
    d = Driver()
    d.request("a")
    first = d.load("a")
    d.request("a")
    assert d.last(Grant).runner == first and d.scheduler.loads == 1


def test_another_copy_never_evicts_a_runner_the_copies_running_take_its_requests() -> None:
    d = Driver(SchedulerConfig(max_loaded=2))
    d.request("b")
    d.load("b")
    d.request("a", copies=2)
    first = d.load("a")
    waiting = d.request("a", copies=2)
    d.feed(Prepared("a", SHAPE, d.estimate, Memory(64 << 30, 64 << 30)))
    assert (d.last(Grant).request, d.last(Grant).runner) == (waiting, first)
    assert not d.all(Drain) and d.scheduler.loads == 2
    later = d.request("a", copies=2)  # no new load until memory returns
    assert (d.last(Grant).request, d.last(Grant).runner) == (later, first)


def test_the_scheduler_imports_nothing_that_does_io() -> None:
    source = (Path(__file__).parents[2] / "runner" / "scheduler.py").read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    banned = {"asyncio", "os", "time", "subprocess", "socket", "httpx", "signal", "shutil",
              "pynvml"}
    assert not imported & banned
    assert {m for m in imported if m.startswith("runner.")} <= {
        "runner.errors", "runner.modes", "runner.policy", "runner.units"}


def test_a_copy_that_fails_to_start_hands_its_waiters_to_the_copies_running() -> None:
    d = Driver()
    d.request("a", copies=2)
    first = d.load("a")
    waiting = d.request("a", copies=2)
    d.feed(Prepared("a", SHAPE, d.estimate, d.memory))
    d.feed(StartFailed(d.last(Spawn).runner, RuntimeError("no")))
    assert (d.last(Grant).request, d.last(Grant).runner) == (waiting, first)
    assert not d.all(Fail)
