"""The scheduler against in-process fake runners: every decision, no subprocess."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from runner.errors import (
    ModelInUseError,
    ModelNotFoundError,
    ModelTooLargeError,
    QueueFullError,
    RunnerStartError,
    ShuttingDownError,
)
from runner.events import EventBus
from runner.memory import GpuMemory
from runner.modes import RunnerMode
from runner.payloads import Payloads
from runner.process import LaunchSpec, RunnerProcess, RunnerState
from runner.service_types import Lease, RunnerOptions
from runner.settings import ModelConfig, Settings
from runner.supervisor import Supervisor
from runner.variants import GpuInfo
from tests.fakes.gguf import write_empty_gguf


class FakeRunner:
    """Stands in for RunnerProcess; records what the scheduler does to it."""

    alive = 0
    most_alive = 0
    ports = 0

    def __init__(self, spec: LaunchSpec, binary: Path, variant: str, env: dict[str, str],
                 load_timeout: float, stop_timeout: float,
                 on_exit: Callable[[Any], None] | None = None) -> None:
        self.spec = spec
        self.variant = variant
        self.env = env
        self.api_key = "k"
        FakeRunner.ports += 1
        self.port = FakeRunner.ports  # unique: a lease names its runner by port
        self.pid: int | None = 4242
        self.load_seconds = 0.0
        self.returncode: int | None = None
        self.state = RunnerState.STOPPED
        self.stops = 0
        self.on_exit = on_exit
        self.gate: asyncio.Event | None = None
        self.fail: str | None = None
        self.started_at = 0.0
        self.output: list[str] = []
        self.on_line: Callable[[str], None] | None = None

    def say(self, line: str) -> None:
        """A line of output, as the real runner's output pump would report it."""
        self.output.append(line)
        if self.on_line is not None:
            self.on_line(line)

    @property
    def base_url(self) -> str:
        return "http://127.0.0.1:1"

    rss = 1 << 20

    def rss_bytes(self) -> int | None:
        return self.rss if self.state is RunnerState.READY else None

    async def start(self) -> None:
        self.state = RunnerState.STARTING
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            self.state = RunnerState.FAILED
            self.returncode = 3
            raise RunnerStartError(self.fail)
        FakeRunner.alive += 1
        FakeRunner.most_alive = max(FakeRunner.most_alive, FakeRunner.alive)
        self.started_at = time.time()
        self.state = RunnerState.READY

    healthy = True
    forced = False
    checks = 0

    async def check_health(self) -> bool:
        self.checks += 1
        return self.healthy and self.state is RunnerState.READY

    async def stop(self, force: bool = False) -> None:
        self.forced = force
        self.stops += 1
        if self.state is RunnerState.READY:
            FakeRunner.alive -= 1
        self.state = RunnerState.STOPPED

    def crash(self) -> None:
        FakeRunner.alive -= 1
        self.state = RunnerState.FAILED
        assert self.on_exit is not None
        self.on_exit(self)


class Factory:
    def __init__(self) -> None:
        self.made: list[FakeRunner] = []
        self.gate: asyncio.Event | None = None
        self.fail_next: str | None = None

    def of(self, lease: Lease) -> FakeRunner:
        """The runner a lease is for."""
        return next(r for r in self.made if r.port == lease.port)

    def __call__(self, *args: Any) -> RunnerProcess:
        runner = FakeRunner(*args)
        runner.gate = self.gate
        runner.fail, self.fail_next = self.fail_next, None
        self.made.append(runner)
        return runner  # type: ignore[return-value]


@pytest.fixture(autouse=True)
def _reset_counts() -> None:
    FakeRunner.alive = 0
    FakeRunner.most_alive = 0
    FakeRunner.rss = 1 << 20


MiB = 1 << 20


def _scheduler(tmp_path: Path, factory: Factory, needs: dict[str, int] | None = None,
               memory: tuple[int, int] | Callable[[], tuple[int, int]] = (64 << 30, 64 << 30),
               backends: dict[str, str] | None = None, replicas: dict[str, int] | None = None,
               **kwargs: Any) -> Supervisor:
    """A scheduler over models a, b, c, each with its own GGUF; ``needs`` sets estimates,
    ``memory`` the machine's (total, available) or a probe for it, ``backends`` the models'
    backends."""
    models = {}
    for name in ("a", "b", "c"):
        gguf = tmp_path / f"{name}.gguf"
        write_empty_gguf(gguf)
        models[name] = ModelConfig(source=str(gguf),
                                   backend=(backends or {}).get(name, "llama-cpp"),
                                   replicas=(replicas or {}).get(name, 1))
    hooks = {k: kwargs.pop(k) for k in ("gpu", "gpu_probe", "gpu_usage", "sources", "installed",
                                        "events", "on_stop") if k in kwargs}
    config = Settings(home=tmp_path, models=models, **kwargs)
    payloads = Payloads(root=tmp_path / "p", sources=hooks.pop("sources", {}),
                        system_binary=tmp_path / "bin")
    sizes = needs or {}

    def estimator(path: Path, ctx: int, parallel: int) -> int:
        return sizes.get(path.stem, 100 * MiB)

    probe = memory if callable(memory) else lambda: memory
    return Supervisor(config, payloads, cpu_flags=frozenset(), runner_factory=factory,
                     clock=lambda: 1000.0, estimator=estimator, memory=probe,
                     backends=hooks.pop("installed", None), **hooks)


async def _hold(scheduler: Supervisor, model: str) -> tuple[asyncio.Task[None], asyncio.Event]:
    """A request that keeps ``model`` busy until the returned event is set."""
    release = asyncio.Event()

    async def hold() -> None:
        async with scheduler.acquire(model):
            await release.wait()

    task = asyncio.create_task(hold())
    await asyncio.sleep(0.01)
    return task, release


async def _use(scheduler: Supervisor, model: str, hold: float = 0.0,
               keep_alive: float | None = None) -> str:
    async with scheduler.acquire(model, keep_alive=keep_alive) as lease:
        await asyncio.sleep(hold)
        return lease.model


async def test_scheduler_loads_once_and_reuses(tmp_path: Path) -> None:
    factory = Factory()
    scheduler = _scheduler(tmp_path, factory)
    assert await _use(scheduler, "a") == "a"
    assert await _use(scheduler, "a") == "a"
    assert scheduler.loads == 1
    await scheduler.close()
    assert factory.made[0].stops == 1


async def test_scheduler_unknown_model(tmp_path: Path) -> None:
    scheduler = _scheduler(tmp_path, Factory())
    with pytest.raises(ModelNotFoundError):
        await _use(scheduler, "zzz")


async def test_scheduler_keep_alive_zero_unloads_once_idle(tmp_path: Path) -> None:
    factory = Factory()
    scheduler = _scheduler(tmp_path, factory)
    async with scheduler.acquire("a", keep_alive=0):
        assert [r.model for r in scheduler.loaded()] == ["a"]
    assert scheduler.loaded() == []
    await asyncio.sleep(0)
    assert factory.made[0].stops == 1
    await scheduler.close()


async def test_scheduler_keep_alive_sets_expiry_from_release(tmp_path: Path) -> None:
    scheduler = _scheduler(tmp_path, Factory())
    await _use(scheduler, "a", keep_alive=600)
    (info,) = scheduler.loaded()
    assert info.expires_at == 1600.0 and info.keep_alive == 600
    async with scheduler.acquire("a"):
        (busy,) = scheduler.loaded()
        assert busy.expires_at is None and busy.in_flight == 1
        assert busy.keep_alive == 600, "a request without keep_alive keeps the last one"
    await scheduler.close()


async def test_scheduler_negative_keep_alive_never_expires(tmp_path: Path) -> None:
    scheduler = _scheduler(tmp_path, Factory(), keep_alive=0.01)
    await _use(scheduler, "a", keep_alive=-1)
    await asyncio.sleep(0.05)
    (info,) = scheduler.loaded()
    assert info.expires_at is None
    await scheduler.close()


async def test_scheduler_default_keep_alive_timer_unloads(tmp_path: Path) -> None:
    factory = Factory()
    scheduler = _scheduler(tmp_path, factory, keep_alive=0.02)
    await _use(scheduler, "a")
    assert scheduler.loaded()
    await asyncio.sleep(0.1)
    assert scheduler.loaded() == []
    assert factory.made[0].stops == 1
    await scheduler.close()


async def test_scheduler_duplicate_expiry_stops_once(tmp_path: Path) -> None:
    factory = Factory()
    scheduler = _scheduler(tmp_path, factory)
    await _use(scheduler, "a")
    (runner,) = scheduler.scheduler.runners.values()
    assert runner.expires_at is not None
    scheduler._timer_fired(runner.id, runner.expires_at)
    scheduler._timer_fired(runner.id, runner.expires_at)
    await asyncio.sleep(0)
    assert factory.made[0].stops == 1
    await scheduler.close()


async def test_scheduler_expiry_racing_a_new_request_keeps_the_runner(tmp_path: Path) -> None:
    scheduler = _scheduler(tmp_path, Factory())
    await _use(scheduler, "a")
    (runner,) = scheduler.scheduler.runners.values()
    at = runner.expires_at
    assert at is not None
    async with scheduler.acquire("a"):
        scheduler._timer_fired(runner.id, at)  # the timer fired just as the request attached
        assert scheduler.loaded()
    await scheduler.close()


async def test_scheduler_full_queue_is_refused_at_once(tmp_path: Path) -> None:
    factory = Factory()
    factory.gate = asyncio.Event()
    scheduler = _scheduler(tmp_path, factory, max_queue=2)
    waiting = [asyncio.create_task(_use(scheduler, "a")) for _ in range(2)]
    await asyncio.sleep(0.01)
    with pytest.raises(QueueFullError) as info:
        await _use(scheduler, "a")
    assert info.value.retry_after >= 1
    factory.gate.set()
    assert await asyncio.gather(*waiting) == ["a", "a"]
    await scheduler.close()


async def test_scheduler_loaded_traffic_does_not_wait_behind_a_load(tmp_path: Path) -> None:
    factory = Factory()
    scheduler = _scheduler(tmp_path, factory)
    await _use(scheduler, "a")
    factory.gate = asyncio.Event()
    loading_b = asyncio.create_task(_use(scheduler, "b"))
    await asyncio.sleep(0.01)
    assert await asyncio.wait_for(_use(scheduler, "a"), 0.5) == "a"
    factory.gate.set()
    assert await loading_b == "b"
    await scheduler.close()


async def test_scheduler_alternating_traffic_is_collated(tmp_path: Path) -> None:
    factory = Factory()
    scheduler = _scheduler(tmp_path, factory, max_loaded_models=1)
    models = ["a", "b"] * 20
    results = await asyncio.gather(*(_use(scheduler, m, hold=0.002) for m in models))
    assert results == models
    assert FakeRunner.most_alive == 1, "two runners were loaded at once"
    print(f"collation: {scheduler.loads} loads for 40 alternating requests")
    assert scheduler.loads <= 4, f"{scheduler.loads} loads for 40 alternating requests"
    await scheduler.close()


async def test_scheduler_busy_victim_is_drained_not_killed(tmp_path: Path) -> None:
    factory = Factory()
    scheduler = _scheduler(tmp_path, factory, max_loaded_models=1)
    holder, release_a = await _hold(scheduler, "a")
    want_b = asyncio.create_task(_use(scheduler, "b"))
    await asyncio.sleep(0.02)
    (a,) = factory.made
    assert a.stops == 0 and scheduler.loaded()[0].draining
    # A request for it while it drains rides along rather than wait out the swap.
    assert await asyncio.wait_for(_use(scheduler, "a"), 1) == "a"
    release_a.set()
    await holder
    assert await want_b == "b"
    assert a.stops == 1 and scheduler.loads == 2
    await scheduler.close()


async def test_scheduler_cancelled_queued_request_loads_nothing(tmp_path: Path) -> None:
    factory = Factory()
    scheduler = _scheduler(tmp_path, factory, max_loaded_models=1)
    holder, release_a = await _hold(scheduler, "a")
    want_b = asyncio.create_task(_use(scheduler, "b"))
    await asyncio.sleep(0.01)
    want_b.cancel()
    release_a.set()
    await holder
    await asyncio.sleep(0.02)
    assert [r.spec.model for r in factory.made] == ["a"], "b was loaded for a client that left"
    await scheduler.close()


async def test_scheduler_load_failure_reaches_every_waiter_then_retries(tmp_path: Path) -> None:
    factory = Factory()
    factory.gate = asyncio.Event()
    factory.fail_next = "llama-server exited with code 3"
    scheduler = _scheduler(tmp_path, factory)
    waiters = [asyncio.create_task(_use(scheduler, "a")) for _ in range(3)]
    await asyncio.sleep(0.01)
    factory.gate.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(r, RunnerStartError) for r in results)
    assert await _use(scheduler, "a") == "a"
    await scheduler.close()


async def test_scheduler_crashed_runner_is_reloaded_by_the_next_request(tmp_path: Path) -> None:
    factory = Factory()
    scheduler = _scheduler(tmp_path, factory)
    await _use(scheduler, "a")
    factory.made[0].crash()
    assert scheduler.loaded() == []
    assert await _use(scheduler, "a") == "a"
    assert scheduler.loads == 2
    await scheduler.close()


async def test_scheduler_unload_waits_for_in_flight_requests(tmp_path: Path) -> None:
    factory = Factory()
    scheduler = _scheduler(tmp_path, factory)
    assert await scheduler.unload("a") is False
    async with scheduler.acquire("a"):
        assert await scheduler.unload("a") is True
        assert factory.made[0].stops == 0
    await asyncio.sleep(0)
    assert factory.made[0].stops == 1 and scheduler.loaded() == []
    await scheduler.close()


async def test_scheduler_close_fails_queued_requests_and_stops_runners(tmp_path: Path) -> None:
    factory = Factory()
    scheduler = _scheduler(tmp_path, factory)
    await _use(scheduler, "a")
    factory.gate = asyncio.Event()
    queued = asyncio.create_task(_use(scheduler, "b"))
    await asyncio.sleep(0.01)
    await scheduler.close()
    with pytest.raises((ShuttingDownError, asyncio.CancelledError)):
        await queued
    assert all(r.stops >= 1 for r in factory.made)
    with pytest.raises(ShuttingDownError):
        await _use(scheduler, "a")


async def test_scheduler_model_too_large_even_alone_evicts_nothing(tmp_path: Path) -> None:
    factory = Factory()
    scheduler = _scheduler(tmp_path, factory, needs={"b": 2 << 30}, memory_budget=1 << 30)
    await _use(scheduler, "a")
    with pytest.raises(ModelTooLargeError, match=r"needs 2\.0 GiB, 1\.0 GiB available"):
        await _use(scheduler, "b")
    assert [r.model for r in scheduler.loaded()] == ["a"]
    assert factory.made[0].stops == 0
    await scheduler.close()


async def test_scheduler_model_that_does_not_fit_beside_others_evicts(tmp_path: Path) -> None:
    factory = Factory()
    scheduler = _scheduler(tmp_path, factory, needs={"a": 600 * MiB, "b": 600 * MiB},
                           memory_budget=1 << 30)
    FakeRunner.rss = 600 * MiB
    await _use(scheduler, "a")
    assert await _use(scheduler, "b") == "b"
    assert [r.model for r in scheduler.loaded()] == ["b"]
    assert FakeRunner.most_alive == 1
    await scheduler.close()


async def test_scheduler_fits_later_loads_by_measured_memory(tmp_path: Path) -> None:
    factory = Factory()
    # Estimated 900 MiB, measured 100 MiB: once measured, b (800 MiB) fits beside a.
    scheduler = _scheduler(tmp_path, factory, needs={"a": 900 * MiB, "b": 800 * MiB},
                           memory_budget=1 << 30)
    FakeRunner.rss = 100 * MiB
    await _use(scheduler, "a")
    (info,) = scheduler.loaded()
    assert info.estimated_bytes == 900 * MiB and info.actual_bytes == 100 * MiB
    await _use(scheduler, "b")
    assert sorted(r.model for r in scheduler.loaded()) == ["a", "b"]
    await scheduler.close()


async def test_a_requests_memory_peak_is_not_learned_for_the_next_load(tmp_path: Path) -> None:
    factory = Factory()
    scheduler = _scheduler(tmp_path, factory, needs={"a": 300 * MiB}, health_interval=0.005)
    FakeRunner.rss = 200 * MiB  # its steady state once ready
    async with scheduler.acquire("a"):
        runner = factory.made[0]
        runner.rss = 1600 * MiB  # `n_probs: 262144` at its peak
        seen = runner.checks
        for _ in range(200):  # health checks sample memory too
            if runner.checks >= seen + 2:
                break
            await asyncio.sleep(0.005)
        assert runner.checks >= seen + 2
        (busy,) = scheduler.loaded()  # /api/ps samples it mid-request
        assert busy.actual_bytes == 1600 * MiB, "a loaded runner counts what it holds now"
    factory.made[0].rss = 250 * MiB  # after the request
    (idle,) = scheduler.loaded()
    assert idle.actual_bytes == 250 * MiB, "the current figure is the latest, not the peak"
    assert await scheduler.unload("a")
    await _use(scheduler, "a")
    (again,) = scheduler.loaded()
    assert again.estimated_bytes == 200 * MiB
    await scheduler.close()


async def test_after_a_peak_and_an_unload_a_model_fits_its_budget_again(tmp_path: Path) -> None:
    # Issue 18: 1 GiB budget, one chat, one request that peaks at 1.6 GB, /api/unload: every
    # chat after that was refused with "needs 1.6 GiB, 1.0 GiB available".
    factory = Factory()
    scheduler = _scheduler(tmp_path, factory, needs={"a": 300 * MiB}, memory_budget=1 << 30)
    FakeRunner.rss = 250 * MiB
    await _use(scheduler, "a")
    async with scheduler.acquire("a"):
        factory.made[0].rss = 1600 * MiB
        scheduler.loaded()
    # glibc keeps memory a request freed: idle RSS stays high, and an unload used to sample it.
    assert await scheduler.unload("a")
    assert await _use(scheduler, "a") == "a"
    (info,) = scheduler.loaded()
    assert info.estimated_bytes == 250 * MiB, "fitted on its steady state after load"
    assert scheduler.loads == 2
    await scheduler.close()


async def test_a_model_refused_on_its_learned_figure_is_retried_with_its_estimate(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    machine = [(4 << 30, 4 << 30)]
    factory = Factory()
    scheduler = _scheduler(tmp_path, factory, needs={"a": 300 * MiB}, memory=lambda: machine[0])
    FakeRunner.rss = 1536 * MiB  # this runner held far more than its header says
    await _use(scheduler, "a")
    assert await scheduler.unload("a")
    machine[0] = (1 << 30, 1 << 30)  # less memory now: the learned figure no longer fits
    FakeRunner.rss = 250 * MiB
    with caplog.at_level(logging.WARNING, logger="runner.supervisor"):
        assert await _use(scheduler, "a") == "a"
    assert "remembered 1.5 GiB does not fit" in caplog.text
    (retried,) = scheduler.loaded()
    assert retried.estimated_bytes == 300 * MiB
    assert await scheduler.unload("a")
    await _use(scheduler, "a")
    (measured,) = scheduler.loaded()
    assert measured.estimated_bytes == 250 * MiB, "the retried load was measured anew"
    await scheduler.close()


async def test_an_embeddings_runner_learns_its_own_memory_not_the_chat_runners(
    tmp_path: Path,
) -> None:
    factory = Factory()
    scheduler = _scheduler(tmp_path, factory, needs={"a": 100 * MiB})
    embeddings = RunnerOptions(mode=RunnerMode.EMBEDDINGS)
    FakeRunner.rss = 900 * MiB
    await _use(scheduler, "a")
    FakeRunner.rss = 400 * MiB
    async with scheduler.acquire("a", embeddings):
        pass
    first = {info.mode: info.estimated_bytes for info in scheduler.loaded()}
    assert first == {"chat": 100 * MiB, "embeddings": 100 * MiB}
    assert await scheduler.unload("a")
    async with scheduler.acquire("a", embeddings):
        (again,) = scheduler.loaded()
        assert again.estimated_bytes == 400 * MiB, "its own steady state, found by its key"
    await scheduler.close()


async def test_a_runner_of_another_context_size_is_not_fitted_on_a_learned_figure(
    tmp_path: Path,
) -> None:
    factory = Factory()
    scheduler = _scheduler(tmp_path, factory, needs={"a": 100 * MiB})
    FakeRunner.rss = 900 * MiB
    await _use(scheduler, "a")  # ctx 4096
    async with scheduler.acquire("a", RunnerOptions(ctx_size=8192)):
        (bigger,) = scheduler.loaded()
        assert bigger.ctx_size == 8192 and bigger.estimated_bytes == 100 * MiB
    await scheduler.close()


async def test_removing_a_model_in_use_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    factory = Factory()
    scheduler = _scheduler(tmp_path, factory)
    holder, release = await _hold(scheduler, "a")
    with pytest.raises(ModelInUseError, match="1 request in flight or waiting"):
        async with scheduler.removing("a"):
            pytest.fail("the removal ran while a request was in flight")
    (info,) = scheduler.loaded()
    assert info.in_flight == 1 and not info.draining
    release.set()
    await holder
    assert [r.model for r in scheduler.loaded()] == ["a"] and factory.made[0].stops == 0
    assert await _use(scheduler, "a") == "a"
    assert scheduler.loads == 1
    await scheduler.close()


async def test_removing_a_model_refuses_while_a_request_waits_for_its_load(
    tmp_path: Path,
) -> None:
    factory = Factory()
    factory.gate = asyncio.Event()
    scheduler = _scheduler(tmp_path, factory)
    loading = asyncio.create_task(_use(scheduler, "a"))
    await asyncio.sleep(0.01)
    with pytest.raises(ModelInUseError):
        async with scheduler.removing("a"):
            pass
    factory.gate.set()
    assert await loading == "a"
    await scheduler.close()


async def test_removing_an_idle_model_unloads_it_and_holds_its_loads_until_done(
    tmp_path: Path,
) -> None:
    factory = Factory()
    scheduler = _scheduler(tmp_path, factory)
    await _use(scheduler, "a")
    async with scheduler.removing("a"):
        assert scheduler.loaded() == [] and factory.made[0].stops == 1
        arriving = asyncio.create_task(_use(scheduler, "a"))
        await asyncio.sleep(0.01)
        assert len(factory.made) == 1 and not arriving.done(), "loaded during the removal"
    assert await asyncio.wait_for(arriving, 1) == "a"
    assert len(factory.made) == 2
    await scheduler.close()


async def test_scheduler_without_a_budget_respects_available_memory(tmp_path: Path) -> None:
    factory = Factory()
    scheduler = _scheduler(tmp_path, factory, needs={"a": 600 * MiB},
                           memory=(8 << 30, 500 * MiB))
    with pytest.raises(ModelTooLargeError, match="needs 600 MiB, 500 MiB available"):
        await _use(scheduler, "a")
    assert factory.made == []
    await scheduler.close()


async def test_scheduler_chat_and_embeddings_runners_coexist(tmp_path: Path) -> None:
    factory = Factory()
    scheduler = _scheduler(tmp_path, factory)
    async with scheduler.acquire("a") as chat, \
            scheduler.acquire("a", RunnerOptions(mode=RunnerMode.EMBEDDINGS)) as embed:
        assert chat.port != embed.port
        assert chat.model == embed.model == "a"
    assert sorted(r.mode for r in scheduler.loaded()) == ["chat", "embeddings"]
    assert [r.spec.mode for r in factory.made] == [RunnerMode.CHAT, RunnerMode.EMBEDDINGS]
    async with scheduler.acquire("a", RunnerOptions(mode=RunnerMode.EMBEDDINGS)):
        pass
    assert scheduler.loads == 2
    await scheduler.close()


async def test_scheduler_changed_options_reload_the_runner(tmp_path: Path) -> None:
    factory = Factory()
    scheduler = _scheduler(tmp_path, factory)
    await _use(scheduler, "a")
    async with scheduler.acquire("a", RunnerOptions(ctx_size=8192)) as lease:
        assert factory.of(lease).spec.ctx_size == 8192
    first, _ = factory.made
    assert first.stops == 1 and first.spec.ctx_size == 4096
    assert [r.ctx_size for r in scheduler.loaded()] == [8192]
    await scheduler.close()


async def test_scheduler_reload_requested_during_a_load(tmp_path: Path) -> None:
    factory = Factory()
    factory.gate = asyncio.Event()
    scheduler = _scheduler(tmp_path, factory)
    default = asyncio.create_task(_use(scheduler, "a", hold=0.01))
    await asyncio.sleep(0.01)
    bigger = asyncio.create_task(_use_options(scheduler, "a", RunnerOptions(ctx_size=8192)))
    await asyncio.sleep(0.01)
    factory.gate.set()
    assert await default == "a"
    assert await bigger == 8192
    assert [r.spec.ctx_size for r in factory.made] == [4096, 8192]
    assert factory.made[0].stops == 1
    await scheduler.close()


async def _use_options(scheduler: Supervisor, model: str, options: RunnerOptions) -> int:
    async with scheduler.acquire(model, options) as lease:
        return next(info.ctx_size for info in scheduler.loaded() if info.runner == lease.model)


async def test_scheduler_unload_while_loading_leaves_the_load_alone(tmp_path: Path) -> None:
    factory = Factory()
    factory.gate = asyncio.Event()
    scheduler = _scheduler(tmp_path, factory)
    loading = asyncio.create_task(_use(scheduler, "a"))
    await asyncio.sleep(0.01)
    assert await scheduler.unload("a") is False
    factory.gate.set()
    assert await loading == "a"
    assert [r.model for r in scheduler.loaded()] == ["a"]
    await scheduler.close()


async def test_scheduler_kills_a_runner_whose_health_checks_fail(tmp_path: Path) -> None:
    factory = Factory()
    scheduler = _scheduler(tmp_path, factory, health_interval=0.01)
    await _use(scheduler, "a")
    factory.made[0].healthy = False
    for _ in range(100):
        if not scheduler.loaded():
            break
        await asyncio.sleep(0.01)
    assert scheduler.loaded() == []
    await asyncio.sleep(0)
    assert factory.made[0].forced, "a hung runner must be killed, not asked to stop"
    assert await _use(scheduler, "a") == "a"
    assert scheduler.loads == 2
    await scheduler.close()


async def test_scheduler_one_missed_health_check_is_forgiven(tmp_path: Path) -> None:
    factory = Factory()
    scheduler = _scheduler(tmp_path, factory, health_interval=0.01)
    await _use(scheduler, "a")
    runner = factory.made[0]
    runner.healthy = False
    await asyncio.sleep(0.015)
    runner.healthy = True
    await asyncio.sleep(0.05)
    assert [r.model for r in scheduler.loaded()] == ["a"]
    await scheduler.close()


def _gz_sources(tmp_path: Path, *variants: str) -> dict[str, Path]:
    import gzip

    sources = {}
    for variant in variants:
        path = tmp_path / f"{variant}.gz"
        path.write_bytes(gzip.compress(b"#!/bin/sh\n"))
        sources[variant] = path
    return sources


async def test_scheduler_launches_the_gpu_variant_when_a_gpu_is_present(tmp_path: Path) -> None:
    factory = Factory()
    scheduler = _scheduler(tmp_path, factory, gpu=GpuInfo("cuda", "v12"),
                           gpu_probe=lambda: [GpuMemory(0, "H100", 80 << 30, 80 << 30)],
                           gpu_usage=lambda pid: 0, sources=_gz_sources(tmp_path, "cpu",
                                                                        "cuda_v12"))
    await _use(scheduler, "a")
    assert factory.made[0].variant == "cuda_v12"
    await scheduler.close()


async def test_scheduler_counts_gpu_memory_when_fitting(tmp_path: Path) -> None:
    sources = _gz_sources(tmp_path, "cpu", "cuda_v12")
    needs = {"a": 5 << 30}
    cpu_only = _scheduler(tmp_path, Factory(), needs=needs, memory=(2 << 30, 2 << 30),
                          sources=sources)
    with pytest.raises(ModelTooLargeError):
        await _use(cpu_only, "a")
    await cpu_only.close()
    with_gpu = _scheduler(tmp_path, Factory(), needs=needs, memory=(2 << 30, 2 << 30),
                          gpu=GpuInfo("cuda", "v12"), gpu_usage=lambda pid: 0,
                          gpu_probe=lambda: [GpuMemory(0, "L4", 8 << 30, 8 << 30)],
                          sources=sources)
    assert await _use(with_gpu, "a") == "a"
    await with_gpu.close()


async def test_copies_of_a_replicated_model_are_pinned_one_per_gpu(tmp_path: Path) -> None:
    factory = Factory()
    devices = [GpuMemory(0, "L4", 24 << 30, 20 << 30), GpuMemory(1, "L4", 24 << 30, 22 << 30)]
    scheduler = _scheduler(tmp_path, factory, replicas={"a": 4}, gpu=GpuInfo("cuda", "v12"),
                           gpu_probe=lambda: devices, gpu_usage=lambda pid: 0,
                           sources=_gz_sources(tmp_path, "cuda_v12"))
    first, release_first = await _hold(scheduler, "a")
    second, release_second = await _hold(scheduler, "a")  # the one slot is taken: a copy
    for _ in range(200):
        if len(scheduler.loaded()) == 2:
            break
        await asyncio.sleep(0.01)
    assert [r.env.get("CUDA_VISIBLE_DEVICES") for r in factory.made] == ["1", "0"]
    assert {r.env.get("CUDA_DEVICE_ORDER") for r in factory.made} == {"PCI_BUS_ID"}
    assert sorted(info.gpu for info in scheduler.loaded()) == [0, 1]  # type: ignore[type-var]
    assert await _use(scheduler, "a") == "a"  # two GPUs, two copies: the third rides one
    assert len(factory.made) == 2
    await _use(scheduler, "b")  # one copy only: spread over every GPU as before
    assert "CUDA_VISIBLE_DEVICES" not in factory.made[2].env
    release_first.set()
    release_second.set()
    await asyncio.gather(first, second)
    await scheduler.close()


async def test_a_replicated_model_runs_one_copy_on_a_machine_without_two_gpus(
        tmp_path: Path) -> None:
    factory = Factory()
    scheduler = _scheduler(tmp_path, factory, replicas={"a": 4})
    held, release = await _hold(scheduler, "a")
    assert await _use(scheduler, "a") == "a"
    assert len(factory.made) == 1 and "CUDA_VISIBLE_DEVICES" not in factory.made[0].env
    release.set()
    await held
    await scheduler.close()


async def test_scheduler_waits_for_gpu_memory_to_return_after_unload(tmp_path: Path) -> None:
    readings = iter([4 << 30] + [4 << 30] * 3 + [6 << 30] * 100)
    polls: list[float] = []

    def probe() -> list[GpuMemory]:
        polls.append(asyncio.get_running_loop().time())
        return [GpuMemory(0, "L4", 24 << 30, next(readings))]

    factory = Factory()
    scheduler = _scheduler(tmp_path, factory, gpu=GpuInfo("cuda", "v12"), gpu_probe=probe,
                           gpu_usage=lambda pid: 2 << 30,
                           sources=_gz_sources(tmp_path, "cuda_v12"))
    await _use(scheduler, "a", keep_alive=0)
    polls.clear()
    for _ in range(100):
        if not scheduler._stops:
            break
        await asyncio.sleep(0.05)
    assert not scheduler._stops
    assert len(polls) >= 4, "the unload finished before the GPU reported its memory free"
    await scheduler.close()


async def test_a_models_backend_picks_what_is_launched(tmp_path: Path) -> None:
    import gzip

    from runner.backends import Backends

    sources = {}
    for variant in ("cpu", "cpu_avx2"):
        packed = tmp_path / "src" / variant / "llama-server.gz"
        packed.parent.mkdir(parents=True)
        packed.write_bytes(gzip.compress(b"#!/bin/sh\n"))
        sources[variant] = packed
    installed = tmp_path / "backends" / "mine"
    installed.mkdir(parents=True)
    (installed / "run.sh").write_text("#!/bin/sh\n")
    factory = Factory()
    configs = {"a": "llama-cpp", "b": "cpu_avx2", "c": "mine"}
    scheduler = _scheduler(tmp_path, factory, sources=sources, backends=configs,
                           installed=Backends(tmp_path / "backends", embedded=lambda: sources))
    for model in configs:
        await _use(scheduler, model)
    launched = {r.spec.model: r.variant for r in factory.made}
    # No CPU flags here: the meta can only offer plain cpu; naming a variant forces it.
    assert launched == {"a": "cpu", "b": "cpu_avx2", "c": "mine"}
    await scheduler.close()


async def test_an_embeddings_model_refuses_chat_and_serves_embeddings(tmp_path: Path) -> None:
    from runner.errors import ModeNotServedError

    gguf = tmp_path / "e.gguf"
    write_empty_gguf(gguf)
    settings = Settings(home=tmp_path, models={
        "embed": ModelConfig(source=str(gguf), embeddings=True)})
    factory = Factory()
    scheduler = Supervisor(settings, Payloads(root=tmp_path / "p", sources={},
                                             system_binary=tmp_path / "bin"),
                          cpu_flags=frozenset(), runner_factory=factory,
                          estimator=lambda *_: MiB, memory=lambda: (64 << 30, 64 << 30))
    with pytest.raises(ModeNotServedError, match="/v1/embeddings"):
        async with scheduler.acquire("embed"):
            pass
    async with scheduler.acquire("embed", RunnerOptions(mode=RunnerMode.EMBEDDINGS)) as lease:
        assert factory.of(lease).spec.mode is RunnerMode.EMBEDDINGS
    assert scheduler.loads == 1
    await scheduler.close()


async def test_a_reranking_model_serves_only_rerank_and_a_chat_model_never_does(
    tmp_path: Path,
) -> None:
    from runner.errors import ModeNotServedError

    gguf = tmp_path / "r.gguf"
    write_empty_gguf(gguf)
    settings = Settings(home=tmp_path, models={
        "ranker": ModelConfig(source=str(gguf), reranking=True),
        "chat": ModelConfig(source=str(gguf))})
    factory = Factory()
    scheduler = Supervisor(settings, Payloads(root=tmp_path / "p", sources={},
                                             system_binary=tmp_path / "bin"),
                          cpu_flags=frozenset(), runner_factory=factory,
                          estimator=lambda *_: MiB, memory=lambda: (64 << 30, 64 << 30))
    reranking = RunnerOptions(mode=RunnerMode.RERANKING)
    with pytest.raises(ModeNotServedError, match="/v1/rerank"):
        async with scheduler.acquire("ranker"):
            pass
    with pytest.raises(ModeNotServedError, match="reranking: true"):
        async with scheduler.acquire("chat", reranking):
            pass
    async with scheduler.acquire("ranker", reranking) as lease:
        assert factory.of(lease).spec.mode is RunnerMode.RERANKING
    # Routes any runner can answer (tokenize) go to the model's only mode.
    async with scheduler.acquire("ranker", RunnerOptions(mode=None)) as lease:
        assert factory.of(lease).spec.mode is RunnerMode.RERANKING
    assert scheduler.loads == 1
    assert [info.mode for info in scheduler.loaded()] == ["reranking"]
    await scheduler.close()


async def test_scheduler_publishes_a_load_unload_cycle_in_order(tmp_path: Path) -> None:
    bus = EventBus()
    watching = bus.subscribe(logs="a")
    factory = Factory()
    scheduler = _scheduler(tmp_path, factory, events=bus)
    async with scheduler.acquire("a") as lease:
        assert lease.load_seconds == factory.made[0].load_seconds  # it waited for that load
        factory.made[0].say("srv  update_slots: all slots are idle")
    async with scheduler.acquire("a") as again:
        assert again.load_seconds == 0.0  # found it ready
    assert await scheduler.unload("a")
    seen = []
    while watching._events:
        event = await watching.next()
        assert event is not None
        seen.append((event.kind, event.data.get("state", event.data.get("depth",
                                                                          event.data.get("line")))))
    assert seen == [("queue", 1), ("runner", "starting"), ("runner", "ready"), ("queue", 0),
                    ("log", "srv  update_slots: all slots are idle"),
                    ("runner", "stopping"), ("runner", "stopped")]
    await scheduler.close()


async def test_scheduler_publishes_nothing_nobody_watches(tmp_path: Path) -> None:
    bus = EventBus()
    factory = Factory()
    scheduler = _scheduler(tmp_path, factory, events=bus)
    await _use(scheduler, "a")
    late = bus.subscribe()
    assert late._events == deque()  # nothing was built or kept for it meanwhile
    await scheduler.close()


async def test_scheduler_publishes_a_failed_load(tmp_path: Path) -> None:
    bus = EventBus()
    watching = bus.subscribe()
    factory = Factory()
    factory.fail_next = "exited with code 3"
    scheduler = _scheduler(tmp_path, factory, events=bus)
    with pytest.raises(RunnerStartError):
        await _use(scheduler, "a")
    states = [e.data.get("state") for e in list(watching._events) if e.kind == "runner"]
    assert states == ["starting", "failed"]
    failed = next(e for e in watching._events if e.data.get("state") == "failed")
    assert "exited with code 3" in failed.data["error"]
    await scheduler.close()


async def test_each_runner_gone_is_reported_by_port_once_unloaded_or_crashed(
        tmp_path: Path) -> None:
    # The relay's connection pool keys hosts by port; told nothing, it kept every runner's.
    factory = Factory()
    gone: list[int] = []
    scheduler = _scheduler(tmp_path, factory, on_stop=gone.append)
    async with scheduler.acquire("a", keep_alive=0):
        factory.made[0].port = 5001
    await asyncio.sleep(0)
    assert gone == [5001]
    async with scheduler.acquire("b"):
        factory.made[1].port = 5002
    factory.made[1].crash()
    assert gone == [5001, 5002]
    await scheduler.close()


async def test_a_stopped_or_crashed_runners_output_can_still_be_read(tmp_path: Path) -> None:
    factory = Factory()
    scheduler = _scheduler(tmp_path, factory)
    await _use(scheduler, "a")
    factory.made[0].say("srv  load_model: loaded")
    assert await scheduler.unload("a") is True
    await asyncio.sleep(0)
    assert scheduler.loaded() == []
    factory.made[0].say("srv  main: exiting")  # its last words, after the unload began
    assert scheduler.runner_output("a") == ["srv  load_model: loaded", "srv  main: exiting"]
    await _use(scheduler, "b")
    factory.made[1].say("oops")
    factory.made[1].crash()
    assert scheduler.runner_output("b") == ["oops"]
    await _use(scheduler, "a")  # a new runner of the key: its own output, not the last one's
    assert scheduler.runner_output("a") == []
    await scheduler.close()


async def test_a_sliding_window_model_gets_a_full_cache_when_cheap_and_it_is_counted(
        tmp_path: Path, gemma_path: Path) -> None:
    """--swa-full (what cache reuse and restore need on Gemma 3) within swa_full_max, with its
    memory in the estimate; beyond it, neither the flag nor the reuse that needs it."""
    needs = {}
    for limit in (512 * MiB, MiB):
        factory = Factory()
        config = Settings(home=tmp_path, swa_full_max=limit,
                          models={"g": ModelConfig(source=str(gemma_path), ctx_size=4096)})
        supervisor = Supervisor(config, Payloads(root=tmp_path / "p", sources={},
                                                 system_binary=tmp_path / "bin"),
                                cpu_flags=frozenset(), runner_factory=factory,
                                memory=lambda: (64 << 30, 64 << 30))
        async with supervisor.acquire("g"):
            (info,) = supervisor.loaded(sample=False)
        await supervisor.close()
        spec = factory.made[0].spec
        assert spec.swa_full is (limit > MiB)
        assert spec.cache_reuse == (256 if limit > MiB else 0)
        needs[limit] = info.estimated_bytes
    # 15 windowed layers of 1 KiB a cell, 4096 cells instead of 1024: 45 MiB more.
    assert needs[512 * MiB] - needs[MiB] == 15 * (4096 - 1024) * 1024
