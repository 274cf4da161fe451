"""The scheduler's decisions as pure functions: no I/O, no clock reads, no mutation.

Port of the choices in Ollama's ``server/sched.go`` (``findRunnerToUnload``, the keep-alive
arithmetic of ``processCompleted``) plus the collation rule its users asked for: when models
compete for room, a model being drained takes no new requests, so alternating traffic A B A B
is served in batches instead of one swap per request.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

FOREVER = float("inf")


@dataclass(frozen=True)
class RunnerView:
    """What eviction needs to know about one loaded runner."""

    key: str
    refs: int
    keep_alive: float  # seconds; negative = forever, 0 = unload once idle


def eviction_order(runners: Iterable[RunnerView]) -> list[RunnerView]:
    """Best victim first: idle before busy, then the shortest keep-alive, then by name.

    A busy victim is only ever drained (it takes no new requests and is stopped when its last
    request finishes), never killed.
    """

    def rank(view: RunnerView) -> tuple[bool, float, str]:
        keep = FOREVER if view.keep_alive < 0 else view.keep_alive
        return (view.refs > 0, keep, view.key)

    return sorted(runners, key=rank)


def pick_victim(runners: Iterable[RunnerView], spare: frozenset[str] = frozenset()) -> str | None:
    """The runner to unload to make room, preferring any not in ``spare`` (models with queued
    requests that a load would otherwise have to reload at once)."""
    ordered = eviction_order(runners)
    for view in ordered:
        if view.key not in spare:
            return view.key
    return ordered[0].key if ordered else None


def expires_at(keep_alive: float, now: float) -> float | None:
    """When an idle runner unloads: None = never (negative keep-alive)."""
    if keep_alive < 0:
        return None
    return now + keep_alive


def has_room(loaded: int, max_loaded: int) -> bool:
    """Whether another runner may start beside ``loaded`` ones under the count cap."""
    return max_loaded <= 0 or loaded < max_loaded


def pick_device(free: dict[int, int], taken: Iterable[int]) -> int | None:
    """The GPU for another copy of a model: of those holding no copy of it yet, the one with
    the most free memory (the lower index on a tie); None when every GPU holds one."""
    held = set(taken)
    open_devices = [(-bytes_free, index) for index, bytes_free in free.items()
                    if index not in held]
    return min(open_devices)[1] if open_devices else None
