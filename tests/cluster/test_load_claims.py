"""Claims on a model's load through a real JetStream KV bucket: one node wins, the other learns
whose load it is; a release frees it; a holder that died frees it within the bucket's TTL."""

from __future__ import annotations

import asyncio

from runner.load_claims import LoadClaims, claim_key
from tests.cluster.conftest import NatsServer
from tests.cluster.test_membership import TTL, _member, _until


async def _joined(nats_server: NatsServer, *names: str) -> list[LoadClaims]:
    claims = []
    for name in names:
        member = _member(nats_server.url, name)
        await member.start()
        await _until(lambda m=member: m.connected, 10)  # type: ignore[misc]
        claims.append(LoadClaims(member, TTL, timeout=1.0))
    return claims


async def test_of_two_nodes_claiming_one_load_one_wins_and_the_other_learns_for_whom(
        nats_server: NatsServer) -> None:
    a, b = await _joined(nats_server, "a", "b")
    key = claim_key("gemma3:270m", "chat")
    try:
        won = await asyncio.gather(a.take(key, "a"), b.take(key, "b"))
        winner, loser = (a, b) if won[0] is None else (b, a)
        # Exactly one won; the other was told the node the winner claimed the load for.
        assert list(won) in ([None, "a"], ["b", None]), won
        assert await loser.take(key, "x") == ("a" if winner is a else "b")
        await asyncio.sleep(TTL * 1.5)  # refreshed while held: the TTL does not free it
        assert await loser.take(key, "x") is not None
        await winner.release(key)
        assert await loser.take(key, "x") is None  # released: the next load may start
        other = claim_key("gemma3:270m", "embeddings")
        assert await winner.take(other, "a") is None  # one claim per model and mode
    finally:
        for claims in (a, b):
            await claims.close()
            await claims._membership.close()


async def test_the_claim_of_a_node_that_died_mid_load_expires_with_the_ttl(
        nats_server: NatsServer) -> None:
    a, b = await _joined(nats_server, "a", "b")
    key = claim_key("m", "chat")
    try:
        assert await a.take(key, "a") is None
        for task in a._held.values():  # dead: it refreshes nothing and releases nothing
            task.cancel()
        a._held.clear()
        assert await b.take(key, "b") == "a"
        loop = asyncio.get_running_loop()
        started = loop.time()
        while await b.take(key, "b") is not None:
            assert loop.time() - started < TTL * 3, "the dead holder's claim never expired"
            await asyncio.sleep(0.2)
    finally:
        for claims in (a, b):
            await claims.close()
            await claims._membership.close()


def test_claim_keys_are_valid_nats_keys_for_any_model_name() -> None:
    import re

    for name in ("gemma3:270m", "hf.co/user/repo:Q4_K_M", "a b+c", "ünï"):
        key = claim_key(name, "chat")
        assert re.fullmatch(r"[-/_=.a-zA-Z0-9]+", key), key
    assert claim_key("m", "chat") != claim_key("m", "embeddings")
