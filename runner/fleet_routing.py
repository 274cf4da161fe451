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

Before all of these, a request that carries a conversation's key (``affinity``) goes to the
copy that key ranks first, within a bound on its load (:func:`by_affinity`): that copy holds
the conversation's prompt in cache.

None: nobody in the fleet has the model.
"""

from __future__ import annotations

import hashlib
import math
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
           loading_at: str | None = None, affinity: bytes | None = None) -> Route | None:
    """The route for one request. ``me`` is this node's live record, ``others`` the view of
    the rest; ``loading_at`` names the node a claimed load of this model is for, if any;
    ``affinity`` the hash of the conversation's opening (:func:`by_affinity`)."""
    if affinity is not None:
        route = by_affinity(me, others, model, mode, affinity)
        if route is not None:
            return route
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


def by_affinity(me: NodeRecord, others: Sequence[NodeRecord], model: str,
                mode: RunnerMode | None, affinity: bytes) -> Route | None:
    """The copy a conversation's follow-ups go to, so they find its prompt in cache:
    consistent hashing with bounded loads. Every node holding a copy is ranked by a hash of
    the conversation's key and its name (rendezvous hashing: every node computes the same
    order, and a node joining or leaving moves only the conversations it ranks first); the
    first whose load (requests in flight and queued), with this one, stays within
    ``LOAD_BOUND`` times its share of the fleet's takes it, even with no slot free: a slot
    there frees soon (the view's busy counts lag by a heartbeat), and the cache saves more
    than the wait. None: no copy qualifies, and the usual order decides."""
    holding = []
    total_load = total_slots = 0
    for record in (me, *others):
        busy, slots = free_slots(record, model, mode)
        if slots:
            load = busy + record.queue_depth
            holding.append((_rank(affinity, record.name), load, slots, record))
            total_load += load
            total_slots += slots
    if len(holding) < 2:
        return None  # one copy or none: nothing to choose between
    for _, load, slots, record in sorted(holding, key=lambda h: h[0], reverse=True):
        if load + 1 <= math.ceil(LOAD_BOUND * (total_load + 1) * slots / total_slots):
            return Route(None if record is me else record, "affinity")
    return None


# How far over its share of the load a conversation's copy may be and still take it: the
# bounded-loads paper's c (Mirrokni, Thorup, Zadimoghaddam, 2018); 1.25 keeps every copy
# within a quarter of the mean while moving few conversations.
LOAD_BOUND = 1.25


def _rank(affinity: bytes, node: str) -> bytes:
    return hashlib.blake2b(affinity + node.encode(), digest_size=8).digest()


def busy_share(record: NodeRecord, model: str, mode: RunnerMode | None) -> float:
    """How full this node's copies of ``model`` are: requests per slot, its queue counted."""
    busy, slots = free_slots(record, model, mode)
    return (busy + record.queue_depth) / slots if slots else float("inf")
