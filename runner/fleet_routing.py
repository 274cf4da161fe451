"""Which node of the fleet serves a request: pure, from the membership view, no I/O.

In order: a copy here with a free slot (no hop at all); else a copy elsewhere with a free
slot, the less busy of two picked at random (the "power of two choices": close to the best
spread at the cost of two looks, and it does not herd every node onto the one that looked
idlest a heartbeat ago); else this node, when it can load the model; else the node that has
the model and the most free memory. None: nobody in the fleet has it.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from runner.modes import RunnerMode
from runner.service_types import NodeRecord, NodeRunner


@dataclass(frozen=True)
class Route:
    node: NodeRecord | None  # None: this node
    reason: str  # for the log and the tests: "free copy here", "free copy", "load here" …


def _serves(runner: NodeRunner, model: str, mode: RunnerMode | None) -> bool:
    return runner.model == model and (mode is None or runner.mode == mode)


def free_slots(record: NodeRecord, model: str, mode: RunnerMode | None) -> tuple[int, int]:
    """(busy, slots) over this node's usable copies of ``model`` in ``mode``."""
    busy = slots = 0
    for runner in record.runners:
        if _serves(runner, model, mode) and not runner.draining:
            busy += runner.busy
            slots += runner.slots
    return busy, slots


def choose(me: NodeRecord, others: Sequence[NodeRecord], model: str, mode: RunnerMode | None,
           here_can_load: bool, rng: random.Random) -> Route | None:
    busy, slots = free_slots(me, model, mode)
    if busy < slots:
        return Route(None, "free copy here")
    free = []
    for record in others:
        their_busy, their_slots = free_slots(record, model, mode)
        if their_busy < their_slots:
            free.append((their_busy / their_slots, record))
    if free:
        picks = rng.sample(free, min(2, len(free)))
        return Route(min(picks, key=lambda pick: pick[0])[1], "free copy")
    if here_can_load:
        return Route(None, "load here")
    having = [record for record in others if model in record.models]
    if not having:
        return None
    roomiest = max(having, key=lambda r: (int(r.memory.get("ram_available", 0)), r.name))
    return Route(roomiest, "load there")
