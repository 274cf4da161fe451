"""The values that cross the door between the gateway and the runner side (:mod:`runner.service`).

Plain data: a gateway, a test or another node can build and read them without any of the
machinery behind them (processes, the scheduler, the store).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from runner.memory import GpuMemory
from runner.model_defaults import NO_DEFAULTS, RequestDefaults
from runner.modes import RunnerMode
from runner.pull import Emit


@dataclass(frozen=True)
class RunnerOptions:
    """Per-request choices that shape a runner; None keeps the model's configured value."""

    mode: RunnerMode | None = RunnerMode.CHAT  # None: the model's primary mode
    ctx_size: int | None = None
    parallel: int | None = None
    gpu_layers: int | str | None = None
    args: tuple[str, ...] | None = None
    here: bool = False  # this node's runners only: a request another node handed over
    # False: a load that would wait for busy runners is refused (503) instead (a fleet's)
    wait_for_room: bool = True
    # A fleet's: the hash of the conversation's opening, to reach the copy holding its cache
    affinity: bytes | None = None


# Node-to-node hops: POST {HOP_PREFIX}{mode or "primary"}{runner path} on the serving node.
HOP_PREFIX = b"/_node/"
PRIMARY = "primary"
# The request's keep_alive, in seconds, on a hop: the first node took it out of the body.
KEEP_ALIVE_HEADER = b"x-switchboard-keep-alive"


def hop_prefix(mode: RunnerMode | None) -> bytes:
    """The path prefix on another node that runs a request on its runner of ``mode``."""
    return HOP_PREFIX + (mode.value if mode is not None else PRIMARY).encode()


@dataclass(frozen=True)
class ContextWindow:
    """What one request may put in a runner's context: ``tokens`` (its slot's share, rounded
    up where llama-server might give more) and the bytes of the vocabulary's longest token.
    Zero for either means unknown: nothing is checked."""

    tokens: int = 0
    longest_token: int = 0


@dataclass(frozen=True, slots=True)
class Lease:
    """A claim on a ready runner for the length of one request: what the relay needs to reach
    it and to say how long the request waited, and nothing of the process behind it."""

    model: str  # the canonical name the runner reports
    requested: str  # the name the client sent (may be an alias)
    host: str
    port: int
    api_key: str
    connections: int  # connections the relay may hold to this runner at once
    queue_seconds: float = 0.0  # waiting for a runner, less any load
    load_seconds: float = 0.0  # of the load this request waited for; 0 if it found one ready
    context: ContextWindow = ContextWindow()
    node: str = ""  # the node whose runner this is
    path_prefix: bytes = b""  # before the runner's path: another node's hop (hop_prefix)
    # The model's own system prompt, messages, stop words and adapter count, for the relay to
    # put into a request that brings none (a hop's: the serving node's lease has them).
    defaults: RequestDefaults = NO_DEFAULTS
    # Its runner has slots untouched since it loaded and saved caches of its key: the relay
    # asks ``ModelService.restore_prompt`` before sending the request.
    prompt_cache: bool = False

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass(frozen=True)
class RunnerInfo:
    """A snapshot of one loaded runner, for ``/api/ps``, ``/metrics`` and the console."""

    runner: str  # its key: model, plus the mode when not chat (``m+embeddings``)
    model: str
    mode: str  # a RunnerMode value
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
    vram_bytes: int = 0
    node: str = ""
    gpu: int | None = None  # the one GPU it is pinned to (a copy of a replicated model)


@dataclass(frozen=True)
class StartingRunner:
    """A runner being loaded now."""

    runner: str
    model: str
    mode: str
    pid: int | None
    variant: str
    estimated_bytes: int
    node: str = ""


@dataclass(frozen=True)
class MemorySample:
    """The machine's memory as the service sees it: RAM and each GPU, in bytes."""

    ram_total: int
    ram_available: int
    gpus: tuple[GpuMemory, ...] = ()


@dataclass(frozen=True)
class NodeRecord:
    """What a node says of itself in the bucket: its runners whole (``/api/ps`` lists them
    fleet-wide; routing reads their slots), and the ``replicas`` of its models that allow
    more than one copy, so a node without the model's config still knows."""

    name: str
    url: str
    version: str
    models: tuple[str, ...] = ()
    runners: tuple[RunnerInfo, ...] = ()
    queue_depth: int = 0
    memory: dict[str, Any] = field(default_factory=dict)
    replicas: dict[str, int] = field(default_factory=dict)

    def encode(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def decode(cls, raw: bytes) -> NodeRecord:
        data = orjson.loads(raw)
        runners = tuple(RunnerInfo(**r) for r in data.pop("runners", ()))
        return cls(runners=runners, models=tuple(data.pop("models", ())), **data)


PullJob = Callable[[Emit], Awaitable[object]]  # runs a pull, reporting progress to ``Emit``
LoadObserver = Callable[[str, str, float], None]  # (model, mode, seconds its load took)
StopObserver = Callable[[str, int], None]  # (host, port) of a runner that is gone
