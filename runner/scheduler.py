"""Which runner serves a request: load on first use, share while loaded, reap on crash.

This is the walking-skeleton scheduler: one load at a time, a runner per model kept until
shutdown or a crash. Its interface (``acquire`` / ``loaded`` / ``unload`` / ``close``) is the one
DESIGN.md fixes, so queueing, memory fit, keep-alive and eviction grow behind it without the
gateway changing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from runner.models import ModelPaths
from runner.payloads import Payloads
from runner.process import LaunchSpec, RunnerProcess, RunnerStartError, RunnerState
from runner.settings import ModelConfig, Settings, child_environment
from runner.variants import order_variants, read_cpu_flags

log = logging.getLogger(__name__)


class ModelNotFoundError(LookupError):
    """No configured model has that name or alias."""


class NoRunnerError(RuntimeError):
    """No runner variant exists for this machine; the message says how to get one."""


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
class _Loaded:
    runner: RunnerProcess
    refs: int = 0
    keep_alive: float | None = None


RunnerFactory = Callable[..., RunnerProcess]


class Scheduler:
    """Hands out runners by model name; owns every runner process it starts."""

    def __init__(
        self,
        settings: Settings,
        payloads: Payloads,
        cpu_flags: frozenset[str] | None = None,
        runner_factory: RunnerFactory = RunnerProcess,
    ) -> None:
        self._settings = settings
        self._payloads = payloads
        self._cpu_flags = read_cpu_flags() if cpu_flags is None else cpu_flags
        self._factory = runner_factory
        self._paths = ModelPaths(settings.home)
        self._loaded: dict[str, _Loaded] = {}
        self._loading: dict[str, asyncio.Task[_Loaded]] = {}
        self._load_lock = asyncio.Lock()  # one load at a time: loads compete for memory
        self._closed = False

    def variants(self) -> list[str]:
        """Runner variants to try on this machine, best first."""
        return order_variants(
            self._payloads.variants(), self._cpu_flags, override=self._settings.llm_library
        )

    @contextlib.asynccontextmanager
    async def acquire(
        self,
        model: str,
        options: dict[str, object] | None = None,
        keep_alive: float | None = None,
    ) -> AsyncIterator[Lease]:
        """A ready runner for ``model`` (name or alias), held until the block exits."""
        del options  # runner-shaping per-request options arrive with the full scheduler
        resolved = self._settings.resolve_model(model)
        if resolved is None:
            raise ModelNotFoundError(model)
        canonical, config = resolved
        entry = await self._ready(canonical, config)
        entry.refs += 1
        if keep_alive is not None:
            entry.keep_alive = keep_alive
        runner = entry.runner
        try:
            yield Lease(canonical, model, runner, runner.base_url, runner.api_key, runner.port)
        finally:
            entry.refs -= 1

    async def _ready(self, canonical: str, config: ModelConfig) -> _Loaded:
        entry = self._loaded.get(canonical)
        if entry is not None and entry.runner.state is RunnerState.READY:
            return entry
        task = self._loading.get(canonical)
        if task is None:
            task = asyncio.create_task(self._load(canonical, config))
            self._loading[canonical] = task
            task.add_done_callback(lambda done: self._load_finished(canonical, done))
        # A client that gives up must not cancel a load other clients share.
        return await asyncio.shield(task)

    def _load_finished(self, canonical: str, task: asyncio.Task[_Loaded]) -> None:
        self._loading.pop(canonical, None)
        if not task.cancelled() and task.exception() is not None:
            # Retrieved here so a load whose every waiter left does not warn at exit;
            # the waiters that remain still see the exception.
            log.debug("load of %s failed: %s", canonical, task.exception())

    async def _load(self, canonical: str, config: ModelConfig) -> _Loaded:
        async with self._load_lock:
            if self._closed:
                raise RuntimeError("scheduler is shutting down")
            model_path = await self._paths.path(config.source)
            spec = self._spec(canonical, config, model_path)
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
                entry = _Loaded(runner)
                self._loaded[canonical] = entry
                return entry
            raise NoRunnerError("no runner variant could start: " + "; ".join(errors))

    def _spec(self, canonical: str, config: ModelConfig, model_path: Path) -> LaunchSpec:
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
            del self._loaded[runner.spec.model]
            log.warning("runner for %s left the loaded set; the next request reloads it",
                        runner.spec.model)

    def loaded(self) -> list[RunnerProcess]:
        """Runners currently serving, in load order."""
        return [entry.runner for entry in self._loaded.values()]

    async def unload(self, model: str) -> bool:
        """Stop the runner for ``model`` (name or alias); False if none was loaded."""
        resolved = self._settings.resolve_model(model)
        if resolved is None:
            raise ModelNotFoundError(model)
        entry = self._loaded.pop(resolved[0], None)
        if entry is None:
            return False
        await entry.runner.stop()
        return True

    async def close(self) -> None:
        """Stop every runner (and any load in progress); each child is reaped."""
        self._closed = True
        for task in list(self._loading.values()):
            task.cancel()
        entries, self._loaded = list(self._loaded.values()), {}
        await asyncio.gather(*(entry.runner.stop() for entry in entries))
