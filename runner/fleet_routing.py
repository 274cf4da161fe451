"""Which node of the fleet serves a request: pure, from the membership view, no I/O.

In order:

1. a copy here with a free slot (no hop at all);
2. a copy elsewhere with a free slot: the less busy of two picked at random (the "power of
   two choices": close to the best spread at the cost of two looks, and it does not herd
   every node onto the one that looked idlest a heartbeat ago);
3. every copy is full and fewer than the model's ``replicas`` run: a new copy, on this node
   when no copy runs anywhere and it has the model (its first copy costs no hop), else on the
   node with the most free memory that has the model and runs no copy yet;
4. the copies are all full and no other may start (``replicas`` reached, or a load is already
   claimed somewhere: one load per model at a time, fleet-wide): the least busy copy, this
   node's on a tie, where the request queues; with no copy yet, the node loading one.

None: nobody in the fleet has the model.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from runner.modes import RunnerMode
from runner.service_types import NodeRecord, RunnerInfo


@dataclass(frozen=True)
class Route:
    node: NodeRecord | None  # None: this node
    reason: str  # for the log and the tests: "free copy here", "free copy", "new copy" …
    load: bool = False  # a new copy starts for it: claim the model's load first


def _serves(runner: RunnerInfo, model: str, mode: RunnerMode | None) -> bool:
    return runner.model == model and (mode is None or runner.mode == mode)


def free_slots(record: NodeRecord, model: str, mode: RunnerMode | None) -> tuple[int, int]:
    """(busy, slots) over this node's usable copies of ``model`` in ``mode``."""
    busy = slots = 0
    for runner in record.runners:
        if _serves(runner, model, mode) and not runner.draining:
            busy += runner.in_flight
            slots += runner.parallel
    return busy, slots


def _copies(record: NodeRecord, model: str, mode: RunnerMode | None) -> int:
    return sum(1 for r in record.runners if _serves(r, model, mode) and not r.draining)


def room(record: NodeRecord) -> int:
    """Bytes a new copy could have on this node without waiting: free memory plus what its
    idle runners hold (older nodes publish only the machine's free RAM)."""
    return int(record.memory.get("room", record.memory.get("ram_available", 0)))


def _roomiest(records: Sequence[NodeRecord]) -> NodeRecord:
    return max(records, key=lambda r: (room(r), r.name))


def choose(me: NodeRecord, others: Sequence[NodeRecord], model: str, mode: RunnerMode | None,
           here_can_load: bool, rng: random.Random, replicas: int = 1,
           loading_at: str | None = None) -> Route | None:
    """The route for one request. ``me`` is this node's live record, ``others`` the view of
    the rest; ``loading_at`` names the node a claimed load of this model is for, if any."""
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
    # Every copy is full (or there is none).
    running = [(record, _copies(record, model, mode)) for record in (me, *others)]
    copies = sum(count for _, count in running)
    if loading_at is None and copies < replicas:
        if copies == 0 and here_can_load:
            return Route(None, "load here", load=True)
        without = [record for record, count in running if count == 0 and (
            here_can_load if record is me else model in record.models)]
        if without:
            target = _roomiest(without)
            return Route(None if target is me else target,
                         "new copy" if copies else "load there", load=True)
    held = [(busy_share(record, model, mode), record is not me, record.name, record)
            for record, count in running if count]
    if held:
        target = min(held)[3]
        return Route(None if target is me else target, "queue at copy")
    if loading_at is not None:
        if loading_at == me.name:
            return Route(None, "joins the load here")
        loader = next((record for record in others if record.name == loading_at), None)
        if loader is not None:
            return Route(loader, "joins the load")
    # Only a claimed load whose node has left the view comes this far (with no claim, step 3
    # placed it): load where it can be loaded, without claiming again.
    if here_can_load:
        return Route(None, "load here")
    having = [record for record in others if model in record.models]
    if not having:
        return None
    return Route(_roomiest(having), "load there")


def busy_share(record: NodeRecord, model: str, mode: RunnerMode | None) -> float:
    """How full this node's copies of ``model`` are: requests per slot, its queue counted."""
    busy, slots = free_slots(record, model, mode)
    return (busy + record.queue_depth) / slots if slots else float("inf")
