"""The fleet's routing choice, called synchronously on hand-made views."""

from __future__ import annotations

import random
from collections import Counter

from runner.fleet_routing import Route, choose
from runner.modes import RunnerMode
from runner.service_types import NodeRecord
from tests.fakes.runners import runner_info

CHAT = RunnerMode.CHAT


def _node(name: str, *copies: tuple[int, int], models: tuple[str, ...] = ("m",),
          ram: int = 0, draining: bool = False) -> NodeRecord:
    runners = tuple(runner_info("m", busy, slots, draining) for busy, slots in copies)
    return NodeRecord(name, f"http://{name}:8080", "v", models, runners,
                      memory={"ram_available": ram})


def test_a_free_copy_here_wins_over_idle_copies_elsewhere() -> None:
    route = choose(_node("me", (1, 2)), [_node("x", (0, 4))], "m", CHAT, True, random.Random(1))
    assert route is not None and route.node is None and route.reason == "free copy here"


def test_a_busy_copy_here_sends_the_request_to_a_free_copy_elsewhere() -> None:
    route = choose(_node("me", (2, 2)), [_node("x", (1, 2)), _node("y", (2, 2))], "m", CHAT,
                   True, random.Random(1))
    assert route is not None and route.node is not None and route.node.name == "x"


def test_two_choices_prefer_the_less_busy_but_spread_over_every_free_copy() -> None:
    others = [_node("idle", (0, 4)), _node("half", (2, 4)), _node("most", (3, 4))]
    rng = random.Random(7)
    picked: Counter[str] = Counter()
    for _ in range(600):
        route = choose(_node("me"), others, "m", CHAT, False, rng)
        assert route is not None and route.node is not None
        picked[route.node.name] += 1
    # The idlest wins every pair it is in (2 of 3 pairs), the busiest none.
    assert picked["most"] == 0
    assert 350 < picked["idle"] < 450 and picked["half"] > 150


def test_draining_copies_and_other_modes_are_not_free_copies() -> None:
    others = [_node("x", (0, 4), draining=True)]
    route = choose(_node("me"), others, "m", CHAT, True, random.Random(1))
    assert route is not None and route.reason == "load here"
    route = choose(_node("me"), [_node("y", (0, 4))], "m", RunnerMode.EMBEDDINGS, True,
                   random.Random(1))
    assert route is not None and route.reason == "load here"


def test_a_model_only_elsewhere_loads_on_the_node_with_most_free_memory() -> None:
    others = [_node("small", ram=1 << 30), _node("big", ram=8 << 30),
              _node("other", ram=64 << 30, models=("n",))]
    route = choose(_node("me", models=()), others, "m", CHAT, False, random.Random(1))
    assert route is not None and route.node is not None and route.node.name == "big"
    assert route.reason == "load there"


def test_a_new_copy_goes_where_idle_runners_make_room_not_where_ram_is_free() -> None:
    # "room" is free memory plus what idle runners hold: a node full of idle runners beats
    # one whose RAM is free but whose budget is held by busy ones.
    busy = NodeRecord("busy", "http://busy:8080", "v", ("m",),
                      memory={"ram_available": 64 << 30, "room": 0})
    idle = NodeRecord("idle", "http://idle:8080", "v", ("m",),
                      memory={"ram_available": 1 << 30, "room": 6 << 30})
    route = choose(_node("me", models=()), [busy, idle], "m", CHAT, False, random.Random(1))
    assert route is not None and route.node is not None and route.node.name == "idle"


def test_a_model_nobody_has_is_none() -> None:
    assert choose(_node("me"), [_node("x")], "zzz", CHAT, False, random.Random(1)) is None


def test_the_first_copy_loads_here_under_a_claim() -> None:
    route = choose(_node("me"), [_node("x", ram=64 << 30)], "m", CHAT, True, random.Random(1),
                   replicas=2)
    assert route == Route(None, "load here", load=True)


def test_every_copy_full_starts_another_on_the_roomiest_node_without_one() -> None:
    others = [_node("x", (1, 1), ram=64 << 30), _node("small", ram=1 << 30),
              _node("big", ram=8 << 30)]
    route = choose(_node("me", models=()), others, "m", CHAT, False, random.Random(1),
                   replicas=2)
    assert route is not None and route.load and route.reason == "new copy"
    assert route.node is not None and route.node.name == "big"
    # This node, roomier than the others and without a copy, takes the new copy itself.
    route = choose(_node("me", ram=128 << 30), others, "m", CHAT, True, random.Random(1),
                   replicas=2)
    assert route == Route(None, "new copy", load=True)


def test_one_replica_queues_at_the_full_copy_rather_than_loading_a_second() -> None:
    route = choose(_node("me"), [_node("x", (1, 1))], "m", CHAT, True, random.Random(1))
    assert route is not None and not route.load and route.reason == "queue at copy"
    assert route.node is not None and route.node.name == "x"


def test_with_replicas_reached_the_least_busy_copy_takes_it_this_nodes_on_a_tie() -> None:
    others = [_node("x", (3, 1)), _node("y", (2, 1)), _node("z")]
    route = choose(_node("me", (2, 1)), others, "m", CHAT, True, random.Random(1), replicas=3)
    assert route == Route(None, "queue at copy")
    route = choose(_node("me", (4, 1)), others, "m", CHAT, True, random.Random(1), replicas=3)
    assert route is not None and route.node is not None and route.node.name == "y"


def test_a_load_claimed_elsewhere_is_joined_not_repeated() -> None:
    others = [_node("x", ram=1 << 30), _node("y", ram=8 << 30)]
    route = choose(_node("me"), others, "m", CHAT, True, random.Random(1), replicas=3,
                   loading_at="x")
    assert route is not None and not route.load and route.node is not None
    assert route.node.name == "x" and route.reason == "joins the load"
    route = choose(_node("me"), others, "m", CHAT, True, random.Random(1), replicas=3,
                   loading_at="me")
    assert route == Route(None, "joins the load here")
    # With a copy running, the request rides it rather than waiting for the load.
    route = choose(_node("me"), [_node("x"), _node("y", (1, 1))], "m", CHAT, True,
                   random.Random(1), replicas=3, loading_at="x")
    assert route is not None and route.node is not None and route.node.name == "y"
    assert not route.load


def test_a_claimed_load_whose_node_left_the_view_loads_without_claiming_again() -> None:
    route = choose(_node("me"), [_node("x")], "m", CHAT, True, random.Random(1), replicas=2,
                   loading_at="gone")
    assert route == Route(None, "load here")
    route = choose(_node("me", models=()), [_node("x")], "m", CHAT, False, random.Random(1),
                   replicas=2, loading_at="gone")
    assert route is not None and not route.load and route.node is not None
    assert route.node.name == "x"


def _favourite(key: bytes, slots: int) -> str:
    """Which of two idle nodes, "a" and "b", the conversation ``key`` ranks first."""
    idle = [_node(name, (0, slots)) for name in ("a", "b")]
    route = choose(idle[0], idle[1:], "m", CHAT, True, random.Random(1), affinity=key)
    assert route is not None
    return "a" if route.node is None else route.node.name


def test_a_conversation_key_goes_to_the_same_copy_whichever_node_takes_it() -> None:
    nodes = [_node(name, (0, 4)) for name in ("a", "b", "c")]
    for key in (b"conv-1", b"conv-2", b"conv-3", b"conv-4"):
        picked = set()
        for me in nodes:  # each node in turn takes the request, the others in its view
            others = [n for n in nodes if n is not me]
            route = choose(me, others, "m", CHAT, True, random.Random(1), affinity=key)
            assert route is not None and route.reason == "affinity"
            picked.add(me.name if route.node is None else route.node.name)
        assert len(picked) == 1, (key, picked)  # not "a free copy here" for each


def test_conversation_keys_spread_over_the_copies() -> None:
    nodes = [_node(name, (0, 4)) for name in ("a", "b", "c")]
    picked: Counter[str] = Counter()
    for i in range(600):
        route = choose(nodes[0], nodes[1:], "m", CHAT, True, random.Random(1),
                       affinity=f"conversation {i}".encode())
        assert route is not None
        picked["a" if route.node is None else route.node.name] += 1
    assert all(150 < picked[name] < 250 for name in "abc"), picked


def test_a_conversations_copy_over_its_share_of_the_load_passes_it_on() -> None:
    key = b"busy conversation"
    favourite = _favourite(key, 4)
    # Its copy has 3 of 4 slots busy, the other none: 4 > ceil(1.25 * 4 / 2) = 3.
    loaded = [_node(n, (3, 4) if n == favourite else (0, 4)) for n in ("a", "b")]
    route = choose(loaded[0], loaded[1:], "m", CHAT, True, random.Random(1), affinity=key)
    assert route is not None
    assert ("a" if route.node is None else route.node.name) != favourite
    # Within the bound it still goes there: 1 of 4 busy, 2 <= ceil(1.25 * 2 / 2) = 2.
    within = [_node(n, (1, 4) if n == favourite else (0, 4)) for n in ("a", "b")]
    route = choose(within[0], within[1:], "m", CHAT, True, random.Random(1), affinity=key)
    assert route is not None and route.reason == "affinity"
    assert ("a" if route.node is None else route.node.name) == favourite


def test_a_single_copy_or_a_draining_one_leaves_affinity_to_the_usual_order() -> None:
    route = choose(_node("me", (0, 4)), [_node("x", (0, 4), draining=True)], "m", CHAT, True,
                   random.Random(1), affinity=b"k")
    assert route is not None and route.reason == "free copy here"


def test_a_conversations_copy_that_looks_full_but_is_within_its_share_still_takes_it() -> None:
    # One slot each, the favourite's taken as of its last heartbeat: 2 <= ceil(1.25 * 2 / 2).
    key = b"follow-up"
    favourite = _favourite(key, 1)
    nodes = [_node(n, (1, 1) if n == favourite else (0, 1)) for n in ("a", "b")]
    me = next(n for n in nodes if n.name != favourite)  # asked at the other node
    route = choose(me, [n for n in nodes if n is not me], "m", CHAT, True, random.Random(1),
                   affinity=key)
    assert route is not None and route.node is not None and route.node.name == favourite
