"""The runner side on this machine: :class:`LocalModelService`, the :class:`ModelService`
(:mod:`runner.service`) whose runners are ``llama-server`` children here and whose store is
this machine's. :mod:`runner.fleet` builds the fleet's on top of it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from importlib.metadata import version
from typing import Any
from urllib.parse import urlsplit

from runner.catalog import Catalog, open_store
from runner.download import HostNotAllowedError
from runner.errors import (
    ConfiguredModelError,
    InvalidNameError,
    ModelNotFoundError,
    PullRefusedError,
    ShuttingDownError,
)
from runner.events import EventBus
from runner.memory import gpu_library, gpus, system_memory
from runner.model_create import CreateError, CreateRequest, ModelCreator
from runner.model_create import Progress as CreateProgress
from runner.model_info import ModelDescriber, ModelFacts
from runner.model_source import is_store_source
from runner.payloads import Payloads, extract, find_system_binary
from runner.pull import Puller
from runner.service_types import (
    Lease,
    LoadObserver,
    MemorySample,
    NodeRecord,
    PullJob,
    RunnerInfo,
    RunnerOptions,
    StartingRunner,
    StopObserver,
)
from runner.settings import Settings
from runner.supervisor import Supervisor
from runner.units import format_bytes
from runner.variants import explain, read_cpu_flags

log = logging.getLogger(__name__)
# Registries anyone may name in a pull through the API, like the default one: public, and
# nowhere inside this server's network. Hugging Face serves Ollama's protocol for its GGUFs.
PUBLIC_REGISTRIES = ("hf.co", "huggingface.co")


class LocalModelService:
    """The runner side on this machine: a supervisor of local ``llama-server`` children, the
    model store under ``SWITCHBOARD_HOME``."""

    def __init__(self, settings: Settings, node: str = "") -> None:
        self._settings = settings
        self._node = node
        self._events = EventBus()
        self._catalog = Catalog(settings, open_store(settings))
        self._describer = ModelDescriber(settings.home, self._catalog.store)
        self._puller = Puller(settings, self._catalog.store)
        self._payloads: Payloads | None = None
        self._supervisor: Supervisor | None = None
        self._on_load: list[LoadObserver] = []
        self._on_stop: list[StopObserver] = []
        self._published_memory: dict[str, Any] = {}  # as of the last record: routing reads it

    @property
    def node(self) -> str:
        return self._node

    @property
    def events(self) -> EventBus:
        return self._events

    @property
    def supervisor(self) -> Supervisor:
        if self._supervisor is None:
            raise ShuttingDownError("switchboard is not serving yet")
        return self._supervisor

    async def start(self) -> None:
        payloads = extract(self._settings.tmpdir, self._settings.home,
                           find_system_binary(self._settings.llama_server))
        self._payloads = payloads
        self._supervisor = Supervisor(self._settings, payloads, gpu=gpu_library(),
                                    on_load=self._loaded, on_stop=self._stopped,
                                    catalog=self._catalog, events=self._events,
                                    node=self._node)

    async def close(self) -> None:
        try:
            if self._supervisor is not None:
                await self._supervisor.close()
            await self._puller.aclose()
        finally:
            if self._payloads is not None:
                self._payloads.cleanup()

    def report(self) -> list[tuple[int, str]]:
        lines = [(logging.INFO, "runner: " + explain(
            self.supervisor.variants(), read_cpu_flags(), self.supervisor.gpu,
            self._settings.llm_library))]
        found = gpus()
        lines += [(logging.INFO, f"GPU {d.index}: {d.name}, {format_bytes(d.free)} free of "
                   f"{format_bytes(d.total)}") for d in found]
        if not found:
            lines.append((logging.INFO, "GPUs: none found (no NVIDIA driver or device; the "
                          "runner uses the CPU)"))
        names = self.names()
        lines.append((logging.INFO, f"models ({len(names)}): "
                      + (", ".join(names) or "none: switchboard pull NAME")))
        return lines

    def observe(self, on_load: LoadObserver | None = None,
                on_stop: StopObserver | None = None) -> None:
        if on_load is not None:
            self._on_load.append(on_load)
        if on_stop is not None:
            self._on_stop.append(on_stop)

    def _loaded(self, model: str, mode: str, seconds: float) -> None:
        for observer in self._on_load:
            observer(model, mode, seconds)

    def _stopped(self, port: int) -> None:
        for observer in self._on_stop:
            observer("127.0.0.1", port)

    # -- names and facts ---------------------------------------------------------------------

    def names(self) -> list[str]:
        return self._catalog.names()

    def canonical(self, name: str) -> str | None:
        resolved = self._catalog.resolve(name)
        return resolved[0] if resolved is not None else None

    async def facts(self, name: str) -> ModelFacts:
        resolved = self._catalog.resolve(name)
        if resolved is None:
            raise ModelNotFoundError(name)
        return await asyncio.to_thread(self._describer.describe, name, resolved[1])

    async def all_facts(self) -> list[ModelFacts]:
        def describe_all() -> list[ModelFacts]:
            found = []
            for name in self._catalog.names():
                resolved = self._catalog.resolve(name)
                if resolved is not None:
                    found.append(self._describer.describe(name, resolved[1]))
            return found

        return await asyncio.to_thread(describe_all)

    # -- runners ------------------------------------------------------------------------------

    def acquire(self, model: str, options: RunnerOptions | None = None,
                keep_alive: float | None = None) -> AbstractAsyncContextManager[Lease]:
        return self.supervisor.acquire(model, options, keep_alive)

    async def restore_prompt(self, lease: Lease, path: bytes, body: bytes) -> int | None:
        if self._supervisor is None or lease.path_prefix:  # another node's runner: its own
            return None
        return await self._supervisor.restore_prompt(lease, path, body)

    def loaded(self) -> list[RunnerInfo]:
        return self.supervisor.loaded() if self._supervisor is not None else []

    def starting(self) -> list[StartingRunner]:
        return self.supervisor.starting() if self._supervisor is not None else []

    @property
    def queue_depth(self) -> int:
        return self._supervisor.queue_depth if self._supervisor is not None else 0

    def runner_output(self, runner: str) -> list[str]:
        return self.supervisor.runner_output(runner) if self._supervisor is not None else []

    async def unload(self, model: str) -> bool:
        return await self.supervisor.unload(model)

    def memory(self) -> MemorySample:
        total, available = system_memory()
        return MemorySample(total, available, tuple(gpus()))

    # -- the fleet ----------------------------------------------------------------------------

    def nodes(self) -> list[NodeRecord]:
        return [self.record()]

    def hop_failed(self, lease: Lease) -> None:
        pass  # alone, every lease is on this node

    def fleet_runners(self) -> list[RunnerInfo]:
        return self.loaded()

    def runners_now(self) -> tuple[RunnerInfo, ...]:
        """The loaded runners as routing needs them, per request: memory as last sampled,
        not read again."""
        if self._supervisor is None:
            return ()
        return tuple(self._supervisor.loaded(sample=False))

    def advertise_url(self) -> str:
        return f"http://{self._settings.host}:{self._settings.port}"

    def record(self) -> NodeRecord:
        """What this node says of itself in the fleet (built at each heartbeat)."""
        runners = tuple(self.loaded())
        total, available = system_memory()
        room = self._supervisor.room() if self._supervisor is not None else available
        memory = {"ram_total": total, "ram_available": available, "room": room,
                  "gpus": [{"index": g.index, "name": g.name, "total": g.total, "free": g.free}
                           for g in gpus()]}
        self._published_memory = memory
        replicas = {name: config.replicas for name, config in self._settings.models.items()
                    if config.replicas > 1}
        return NodeRecord(self._node or "local", self.advertise_url(), version("switchboard"),
                          tuple(self.names()), runners, self.queue_depth, memory, replicas)

    # -- the store ----------------------------------------------------------------------------

    def pull(self, model: str | None = None, url: str | None = None,
             sha256: str | None = None, insecure: bool = False) -> PullJob:
        puller = self._puller
        if url is not None:
            self._check_host(urlsplit(url).netloc, "url")
            digest = sha256 or ""
            return lambda emit: puller.pull_url(url, digest, emit, model)
        if not model:
            raise InvalidNameError("'model' is required")
        name = self._catalog.store.parse_name(model)
        self._check_host(name.host, "model")
        return lambda emit: puller.pull(model, emit, insecure=insecure)

    def _check_host(self, host: str, param: str) -> None:
        """A client of the API may make this server fetch only from the default registry or
        a host the operator allowed: anything else would let it probe the server's network
        (SSRF: cloud metadata, internal services). The CLI, run by the operator, has no such
        limit: it uses the puller directly."""
        allowed = self._catalog.store.default_host.lower()
        if host.lower() in (allowed, *PUBLIC_REGISTRIES):
            return
        try:
            self._puller.options.check_host(f"http://{host}/")
        except HostNotAllowedError:
            pass
        else:
            if self._puller.options.allowed_hosts:
                return
        raise PullRefusedError(host, allowed, param)

    async def create(self, request: CreateRequest, emit: CreateProgress) -> None:
        await ModelCreator(self._catalog).create(request, emit)

    def copy(self, source: str, destination: str) -> None:
        ModelCreator(self._catalog).copy(source, destination)

    def has_blob(self, digest: str) -> bool:
        try:
            return self._catalog.store.has_blob(digest)
        except InvalidNameError:
            return False

    async def receive_blob(self, digest: str, chunks: AsyncIterator[bytes]) -> None:
        try:
            await self._catalog.store.receive_blob(digest, chunks)
        except InvalidNameError as exc:
            raise CreateError(str(exc), param="digest") from None
        except ValueError as exc:
            raise CreateError(f"blob {digest} not stored: {exc}", param="digest") from None

    async def delete(self, model: str) -> None:
        configured = self._catalog.configured(model)
        if configured is not None and not is_store_source(configured[1].source):
            raise ConfiguredModelError(model, configured[1].source)
        target = configured[1].source if configured is not None else model
        store = self._catalog.store
        store.require(target)
        if self._catalog.resolve(model) is not None and self._supervisor is not None:
            # Loads of the model wait until the files are gone: none can take the lock between.
            async with self._supervisor.removing(model):
                await asyncio.to_thread(store.remove, target)
        else:
            await asyncio.to_thread(store.remove, target)

