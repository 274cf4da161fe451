"""Membership through a real JetStream KV bucket: nodes see each other, a dead node leaves
every view within its TTL, a node that leaves goes at once, and NATS being away stops nothing."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from runner.cluster_config import ClusterConfig
from runner.membership import Membership
from runner.service_types import NodeRecord
from tests.cluster.conftest import NatsServer, free_port
from tests.fakes.runners import runner_info

TTL = 2.0


def _member(url: str, name: str, models: tuple[str, ...] = ("gemma3:270m",),
            version: str = "0.1.0", replicas: int = 1) -> Membership:
    config = ClusterConfig(url, name, f"http://127.0.0.1:{free_port()}", "key", replicas)

    def describe() -> NodeRecord:
        return NodeRecord(name, config.advertise_url, version, models,
                          (runner_info("gemma3:270m", 1, 4),), 2,
                          {"ram_available": 1 << 30})

    return Membership(config, describe, TTL, connect_timeout=1.0)


async def _until(check: Callable[[], bool], within: float) -> float:
    """Seconds until ``check`` holds; fails the test past ``within``."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > within:
            pytest.fail(f"not within {within} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def _names(member: Membership) -> list[str]:
    return [record.name for record in member.nodes()]


async def test_two_nodes_see_each_other_and_what_each_serves(nats_server: NatsServer) -> None:
    a, b = _member(nats_server.url, "a"), _member(nats_server.url, "b", ("tiny:latest",))
    await a.start()
    await b.start()
    try:
        await _until(lambda: _names(a) == ["a", "b"] and _names(b) == ["b", "a"], 10)
        other = a.nodes()[1]
        assert other.models == ("tiny:latest",) and other.queue_depth == 2
        assert other.runners == (runner_info("gemma3:270m", 1, 4),)
        assert other.memory == {"ram_available": 1 << 30}
    finally:
        await a.close()
        await b.close()


async def test_a_node_that_leaves_is_gone_at_once(nats_server: NatsServer) -> None:
    a, b = _member(nats_server.url, "a"), _member(nats_server.url, "b")
    await a.start()
    await b.start()
    try:
        await _until(lambda: _names(a) == ["a", "b"], 10)
        await b.close()
        # Gone at a's next refresh (TTL/4), well before the TTL could have dropped it.
        assert await _until(lambda: _names(a) == ["a"], TTL) < TTL
    finally:
        await a.close()


async def test_a_dead_node_leaves_the_view_within_its_ttl(nats_server: NatsServer) -> None:
    a, b = _member(nats_server.url, "a"), _member(nats_server.url, "b")
    await a.start()
    await b.start()
    try:
        await _until(lambda: _names(a) == ["a", "b"], 10)
        # Dies without a word: its heartbeat stops, its record is not deleted.
        assert b._task is not None and b._nc is not None
        b._task.cancel()
        await b._nc.close()
        b._kv = None
        waited = await _until(lambda: _names(a) == ["a"], TTL * 3)
        assert waited <= TTL + TTL / 4 + 1.0
    finally:
        await a.close()


async def test_nats_away_at_start_then_back_the_node_joins(
        nats_server: NatsServer, caplog: pytest.LogCaptureFixture) -> None:
    nats_server.stop()
    a = _member(nats_server.url, "a")
    started = time.monotonic()
    await a.start()
    assert time.monotonic() - started < 0.5  # serving never waits on NATS
    try:
        await asyncio.sleep(TTL)
        assert a.nodes() == []
        assert sum("cannot reach NATS" in r.message for r in caplog.records) == 1
        nats_server.start()
        await _until(lambda: _names(a) == ["a"], 10)
        assert any("is back" in r.message for r in caplog.records)
    finally:
        await a.close()


async def test_nats_lost_while_joined_then_back_the_node_rejoins(
        nats_server: NatsServer, caplog: pytest.LogCaptureFixture) -> None:
    a = _member(nats_server.url, "a")
    await a.start()
    try:
        await _until(lambda: _names(a) == ["a"], 10)
        nats_server.stop()
        await _until(lambda: a.nodes() == [], 10)
        nats_server.start()  # same port and store: the bucket is still there
        await _until(lambda: _names(a) == ["a"], 15)
        lost = [r for r in caplog.records if "lost NATS" in r.message]
        assert len(lost) == 1, [r.message for r in lost]
    finally:
        await a.close()


async def test_a_node_of_another_version_is_listed_with_one_warning(
        nats_server: NatsServer, caplog: pytest.LogCaptureFixture) -> None:
    a, b = _member(nats_server.url, "a"), _member(nats_server.url, "b", version="9.9.9")
    await a.start()
    await b.start()
    try:
        await _until(lambda: _names(a) == ["a", "b"], 10)
        await asyncio.sleep(TTL)  # several more refreshes: still one warning from each side
        said = [r.message for r in caplog.records if "mixed versions" in r.message]
        assert sorted(said) == sorted([
            "node b runs switchboard 9.9.9, this node 0.1.0: listed, but mixed versions may "
            "disagree on what they send each other",
            "node a runs switchboard 0.1.0, this node 9.9.9: listed, but mixed versions may "
            "disagree on what they send each other"])
    finally:
        await a.close()
        await b.close()


def _probe(*urls: str) -> list[str]:
    """Two members joined through ``urls`` (in a child process: nats-py leaves sockets to
    cluster peers unclosed at exit, which this suite's warnings-as-errors would blame on the
    test), each printing the names it sees and the bucket's replicas."""
    result = subprocess.run([sys.executable, "-m", "tests.cluster.ha_probe", *urls],
                            capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.split()


def test_with_three_nats_servers_the_fleet_outlives_one(
        nats_cluster: list[NatsServer]) -> None:
    first, second, third = nats_cluster
    assert _probe(first.url, second.url) == ["replicas=3", "a,b", "b,a"]
    first.stop()
    assert _probe(second.url, third.url) == ["replicas=3", "a,b", "b,a"]


def test_a_record_reads_back_as_written() -> None:
    record = NodeRecord("n", "http://10.0.0.5:8080", "0.1.0", ("m",),
                        (runner_info("m", 0, 2, draining=True),), 0, {"gpus": []},
                        {"m": 3})
    assert NodeRecord.decode(record.encode()) == record


async def test_a_nudged_record_reaches_the_other_views_well_before_the_next_refresh(
        nats_server: NatsServer) -> None:
    busy = [0]

    def member(name: str) -> Membership:
        config = ClusterConfig(nats_server.url, name, f"http://127.0.0.1:{free_port()}", "key",
                               1)

        def describe() -> NodeRecord:
            return NodeRecord(name, config.advertise_url, "0.1.0", ("gemma3:270m",),
                              (runner_info("gemma3:270m", busy[0], 4),), 0, {})

        return Membership(config, describe, 8.0, connect_timeout=1.0)  # refreshes every 2 s

    a, b = member("a"), member("b")
    await a.start()
    await b.start()
    try:
        await _until(lambda: _names(b) == ["b", "a"], 10)
        await asyncio.sleep(0.3)  # past the first refresh, well inside the next one
        took = []
        for count in (3, 0, 2, 0):  # four changes within one refresh: at most one rides it
            busy[0] = count
            a.nudge()
            took.append(await _until(lambda: b.nodes()[1].runners[0].in_flight == busy[0], 3))
        assert max(took) < 0.6, took
    finally:
        await a.close()
        await b.close()


async def test_a_node_that_leaves_is_gone_from_the_watching_views_before_any_refresh(
        nats_server: NatsServer) -> None:
    def member(name: str) -> Membership:
        config = ClusterConfig(nats_server.url, name, f"http://127.0.0.1:{free_port()}", "key",
                               1)
        return Membership(config, lambda: NodeRecord(name, config.advertise_url, "0.1.0"), 8.0,
                          connect_timeout=1.0)  # refreshes every 2 s

    a, b = member("a"), member("b")
    await a.start()
    await b.start()
    try:
        await _until(lambda: _names(a) == ["a", "b"], 10)
        await asyncio.sleep(0.3)
        await b.close()  # deletes its record: the watch sees the delete
        assert await _until(lambda: _names(a) == ["a"], 3) < 1.0
    finally:
        await a.close()
