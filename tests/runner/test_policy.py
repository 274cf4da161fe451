from __future__ import annotations

from runner.policy import (
    RunnerView,
    eviction_order,
    expires_at,
    has_room,
    pick_device,
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


def test_another_copy_takes_the_roomiest_gpu_holding_none_of_it() -> None:
    free = {0: 10, 1: 30, 2: 20}
    assert pick_device(free, []) == 1
    assert pick_device(free, [1]) == 2
    assert pick_device({0: 5, 1: 5}, []) == 0
    assert pick_device(free, [0, 1, 2]) is None
