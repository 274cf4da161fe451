from __future__ import annotations

from runner.policy import (
    RunnerView,
    eviction_order,
    expires_at,
    has_room,
    next_to_load,
    pick_victim,
)


def test_eviction_order_idle_first_then_shortest_keep_alive_then_name() -> None:
    views = [
        RunnerView("busy-short", refs=2, keep_alive=1),
        RunnerView("idle-forever", refs=0, keep_alive=-1),
        RunnerView("idle-long", refs=0, keep_alive=600),
        RunnerView("b-idle-short", refs=0, keep_alive=60),
        RunnerView("a-idle-short", refs=0, keep_alive=60),
    ]
    assert [v.key for v in eviction_order(views)] == [
        "a-idle-short", "b-idle-short", "idle-long", "idle-forever", "busy-short",
    ]


def test_pick_victim_spares_models_with_queued_requests() -> None:
    views = [RunnerView("a", 0, 1), RunnerView("b", 0, 100)]
    assert pick_victim(views) == "a"
    assert pick_victim(views, spare=frozenset({"a"})) == "b"
    assert pick_victim(views, spare=frozenset({"a", "b"})) == "a"
    assert pick_victim([]) is None


def test_expires_at_forever_and_immediate() -> None:
    assert expires_at(-1, 1000.0) is None
    assert expires_at(0, 1000.0) == 1000.0
    assert expires_at(600, 1000.0) == 1600.0


def test_has_room_counts_only_when_capped() -> None:
    assert has_room(5, 0)
    assert has_room(0, 1) and not has_room(1, 1)


def test_next_to_load_is_the_oldest_unserved_model() -> None:
    assert next_to_load(["a", "b", "a"], frozenset({"a"})) == "b"
    assert next_to_load(["a"], frozenset({"a"})) is None
    assert next_to_load([], frozenset()) is None
