"""The one door from the gateway to the runner side: :class:`ModelService`.

The gateway's HTTP code reaches runners, models and the store only through this protocol
(and imports nothing else of ``runner/`` but its settings and units), so a test can hand the
app a fake and a cluster can hand it a service whose runners live on other nodes.
:func:`open_service` picks the one behind it: :class:`~runner.local_service.LocalModelService`
on a single machine (its supervisor starts ``llama-server`` children here, its store is this
machine's), or :class:`~runner.fleet.FleetModelService` when the node joins a fleet.

Everything a route needs crosses here as plain data (:mod:`runner.service_types`), and every
refusal as a :class:`ServiceError` (:mod:`runner.errors`), which the gateway translates to
HTTP in one place.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from runner.cluster_config import cluster_config
from runner.errors import (
    ConfiguredModelError,
    InvalidNameError,
    ModelInUseError,
    ModelNotFoundError,
    ModelNotInStoreError,
    ModelSourceError,
    ModelTooLargeError,
    ModeNotServedError,
    NodesUnreachableError,
    NoRoomError,
    NoRunnerError,
    PullError,
    PullRefusedError,
    QueueFullError,
    RunnerStartError,
    ServiceError,
    ShuttingDownError,
    StoreError,
)
from runner.events import Event, EventBus, Subscription
from runner.fleet import FleetModelService
from runner.local_service import LocalModelService
from runner.memory import GpuMemory
from runner.model_create import CreateError, CreateRequest
from runner.model_create import Progress as CreateProgress
from runner.model_defaults import RequestDefaults
from runner.model_info import ModelFacts
from runner.modes import RunnerMode
from runner.pull import Emit, PullEvent
from runner.service_types import (
    HOP_PREFIX,
    KEEP_ALIVE_HEADER,
    PRIMARY,
    ContextWindow,
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

__all__ = [
    "HOP_PREFIX",
    "KEEP_ALIVE_HEADER",
    "PRIMARY",
    "ConfiguredModelError",
    "ContextWindow",
    "CreateError",
    "CreateProgress",
    "CreateRequest",
    "Emit",
    "Event",
    "EventBus",
    "GpuMemory",
    "InvalidNameError",
    "Lease",
    "LoadObserver",
    "LocalModelService",
    "MemorySample",
    "ModeNotServedError",
    "ModelFacts",
    "ModelInUseError",
    "ModelNotFoundError",
    "ModelNotInStoreError",
    "ModelService",
    "ModelSourceError",
    "ModelTooLargeError",
    "NoRoomError",
    "NoRunnerError",
    "NodeRecord",
    "NodesUnreachableError",
    "PullError",
    "PullEvent",
    "PullJob",
    "PullRefusedError",
    "QueueFullError",
    "RequestDefaults",
    "RunnerInfo",
    "RunnerMode",
    "RunnerOptions",
    "RunnerStartError",
    "ServiceError",
    "ShuttingDownError",
    "StartingRunner",
    "StoreError",
    "Subscription",
    "open_service",
]



class ModelService(Protocol):
    """What the gateway may ask of the runner side."""

    @property
    def node(self) -> str:
        """This node's name, as leases and runner snapshots carry it."""
        ...

    @property
    def events(self) -> EventBus:
        """State changes (runners, queue, output lines, pulls) for ``/api/events``."""
        ...

    async def start(self) -> None:
        """Ready to serve: runners extracted, the machine probed. Called once, before any
        other coroutine."""
        ...

    async def close(self) -> None:
        """Stop every runner and every pull; each child is reaped."""
        ...

    def report(self) -> list[tuple[int, str]]:
        """(log level, line) for the start banner: runners, GPUs, models."""
        ...

    def observe(self, on_load: LoadObserver | None = None,
                on_stop: StopObserver | None = None) -> None:
        """Be told of every load (for metrics) and every runner that is gone (for pools)."""
        ...

    # -- names and facts ---------------------------------------------------------------------

    def names(self) -> list[str]:
        """Every servable name: configured ones first, then stored ones."""
        ...

    def canonical(self, name: str) -> str | None:
        """The canonical name for a name or alias, or None if it names nothing servable."""
        ...

    async def facts(self, name: str) -> ModelFacts:
        """What a model is (header, store layers); :class:`ModelNotFoundError` if none."""
        ...

    async def all_facts(self) -> list[ModelFacts]:
        """Facts of every servable model, in :meth:`names` order."""
        ...

    # -- runners ------------------------------------------------------------------------------

    def acquire(self, model: str, options: RunnerOptions | None = None,
                keep_alive: float | None = None) -> AbstractAsyncContextManager[Lease]:
        """A ready runner for ``model`` (name or alias), held until the block exits."""
        ...

    async def restore_prompt(self, lease: Lease, path: bytes, body: bytes) -> int | None:
        """For a lease with ``prompt_cache``: restore the saved cache the request's prompt
        extends into one of the runner's slots first, and say which slot the request must
        name (``id_slot``); None to send it as it is."""
        ...

    def loaded(self) -> list[RunnerInfo]:
        """Runners loaded now, in load order."""
        ...

    def starting(self) -> list[StartingRunner]:
        """Runners being loaded now."""
        ...

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a runner."""
        ...

    def runner_output(self, runner: str) -> list[str]:
        """The last output lines of a loaded or loading runner (by key); empty if none."""
        ...

    async def unload(self, model: str) -> bool:
        """Unload a model once its requests finish; False if it was not loaded."""
        ...

    def memory(self) -> MemorySample:
        """RAM and GPU memory now (a /proc read and NVML: not per request)."""
        ...

    def nodes(self) -> list[NodeRecord]:
        """The nodes serving with this one, this one first (only itself when alone)."""
        ...

    def hop_failed(self, lease: Lease) -> None:
        """The node ``lease`` named did not answer: route around it for a while."""
        ...

    def fleet_runners(self) -> list[RunnerInfo]:
        """Runners loaded across the fleet, each with its ``node``: this node's (sampled
        now) first, then the others' as their last records say."""
        ...

    # -- the store ----------------------------------------------------------------------------

    def pull(self, model: str | None = None, url: str | None = None,
             sha256: str | None = None, insecure: bool = False) -> PullJob:
        """A pull of a registry ``model`` or of a GGUF at ``url`` (named ``model`` if given),
        checked now (names, hosts a client may make this server fetch from) and run when
        the returned job is awaited with a progress callback."""
        ...

    async def delete(self, model: str) -> None:
        """Remove a pulled model, unloading it first; refused while it is in use."""
        ...

    async def create(self, request: CreateRequest, emit: CreateProgress) -> None:
        """Make a model in the store from ``request`` (Ollama's create), reporting progress;
        :class:`CreateError` for a request that cannot be made, with nothing written."""
        ...

    def copy(self, source: str, destination: str) -> None:
        """A stored model under a second name; :class:`CreateError` if it cannot be."""
        ...

    def has_blob(self, digest: str) -> bool:
        """Whether the store holds the blob ``digest`` (an invalid digest: no)."""
        ...

    async def receive_blob(self, digest: str, chunks: AsyncIterator[bytes]) -> None:
        """Store an uploaded blob (Ollama's ``POST /api/blobs``), which must hash to
        ``digest``; :class:`CreateError` (nothing stored) if it does not."""
        ...


def open_service(settings: Settings) -> ModelService:
    """This machine's service, joined to the fleet when ``cluster`` is set."""
    fleet = cluster_config(settings)
    if fleet is None:
        return LocalModelService(settings)
    return FleetModelService(settings, fleet)
