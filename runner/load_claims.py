"""One load of a model at a time, fleet-wide: a claim in a JetStream key-value bucket.

Before a node starts a copy of a model (here or on another node), it creates the model's key
in ``switchboard_loads`` with the target node's name. Create is create-if-absent, so of two
nodes deciding at once only one wins; the other reads whose load it is and sends its request
there, or to a copy running, instead of starting a second load. The holder refreshes its claim
while it holds it; the bucket's TTL (``node_ttl``) frees the claim of a node that died
mid-load, so a crash never leaves a model unloadable. JetStream decides; nothing here elects.

NATS being away fails open: a node alone loads as it would without a fleet (at worst one load
too many, never a request refused for want of a claim).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging

import nats
from nats.js.api import KeyValueConfig
from nats.js.errors import BadRequestError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from runner.membership import Membership

log = logging.getLogger(__name__)

BUCKET = "switchboard_loads"


def claim_key(model: str, mode: str) -> str:
    """A bucket key for a model's runner of ``mode``: model names hold characters (``:``)
    NATS keys may not, so the name is spelled in URL-safe base64."""
    raw = f"{model}+{mode}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


class LoadClaims:
    def __init__(self, membership: Membership, ttl: float, replicas: int = 1,
                 timeout: float = 1.0) -> None:
        self._membership = membership
        self._ttl = ttl
        self._replicas = replicas
        self._timeout = timeout
        self._kv: KeyValue | None = None
        self._held: dict[str, asyncio.Task[None]] = {}  # key -> its refresher
        self._revisions: dict[str, int] = {}  # key -> our claim's latest revision

    async def _bucket(self) -> KeyValue | None:
        js = self._membership.jetstream()
        if js is None:
            self._kv = None
            return None
        if self._kv is None:
            config = KeyValueConfig(bucket=BUCKET, ttl=self._ttl, history=1,
                                    replicas=self._replicas)
            try:
                self._kv = await js.create_key_value(config)
            except BadRequestError:  # made by a node with other settings: use it as it is
                self._kv = await js.key_value(BUCKET)
        return self._kv

    async def take(self, key: str, target: str) -> str | None:
        """Claim ``key``'s load for node ``target``. None: the claim is ours (or NATS is away:
        go on alone); else the node a load of it is already claimed for."""
        try:
            return await asyncio.wait_for(self._take(key, target), self._timeout * 2)
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            log.info("cannot claim the load of %s (%s); loading without a claim", key,
                     exc or type(exc).__name__)
            return None

    async def _take(self, key: str, target: str) -> str | None:
        kv = await self._bucket()
        if kv is None:
            return None
        for _ in range(3):  # a claim may be released between our create and our read
            try:
                revision = await kv.create(key, target.encode())
            except KeyWrongLastSequenceError:
                try:
                    entry = await kv.get(key)
                except KeyNotFoundError:
                    continue
                return (entry.value or b"").decode() or None
            self._revisions[key] = revision
            self._held[key] = asyncio.create_task(self._refresh(kv, key, target),
                                                  name=f"claim {key}")
            return None
        return None

    async def _refresh(self, kv: KeyValue, key: str, target: str) -> None:
        """Keep the claim while it is held: the bucket's TTL is for holders that died."""
        while True:
            await asyncio.sleep(self._ttl / 4)
            try:
                self._revisions[key] = await asyncio.wait_for(
                    kv.update(key, target.encode(), last=self._revisions[key]), self._timeout)
            except KeyWrongLastSequenceError:
                log.warning("the claim on loading %s was lost (NATS was away longer than "
                            "its TTL); another node may load it too", key)
                return
            except (TimeoutError, OSError, nats.errors.Error) as exc:
                log.debug("claim %s not refreshed: %s", key, exc)

    async def release(self, key: str) -> None:
        """Let the next load of ``key`` be claimed (bounded: never waits on NATS long)."""
        task = self._held.pop(key, None)
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        revision = self._revisions.pop(key)
        if self._kv is None:
            return
        try:
            # Only our own claim: one lost while NATS was away may be another node's now.
            await asyncio.wait_for(self._kv.delete(key, last=revision), self._timeout)
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            log.debug("claim %s not released (%s); it expires with the TTL", key, exc)

    async def close(self) -> None:
        for key in list(self._held):
            await self.release(key)
