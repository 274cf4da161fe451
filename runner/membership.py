"""Which nodes are in the fleet: each publishes itself in a JetStream key-value bucket.

Every node puts its record (models, loaded runners with their slots, queue depth, free memory,
version) under its name in the ``switchboard_nodes`` bucket, a few times per TTL. The bucket's
TTL is the failure detector: JetStream drops a record its node stopped refreshing, so a dead
node leaves every view within the TTL plus one refresh, and nothing here decides who is alive.
The view is read back from the bucket itself (the last record of each key), never kept from
hearsay, at every refresh; between refreshes a watch on the bucket applies each record as it
is put. A node whose busy counts change (a request starts or ends: ``nudge``) puts its record
again at once, at most every ``NUDGE_GAP``, so the other nodes route by counts a fraction of a
second old rather than a refresh old. NATS being away stops none of this node's own serving:
the view is then empty, it is said once in the log, and the node puts itself back when the
client reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig
from nats.js.errors import BadRequestError
from nats.js.kv import KeyValue

from runner.cluster_config import ClusterConfig
from runner.service_types import NodeRecord

log = logging.getLogger(__name__)

BUCKET = "switchboard_nodes"
NUDGE_GAP = 0.1  # seconds a nudged record waits, so a burst's changes go out as one put


class Membership:
    """This node's place in the fleet: its heartbeat, and the live view of every node."""

    def __init__(self, config: ClusterConfig, describe: Callable[[], NodeRecord],
                 ttl: float, connect_timeout: float = 2.0) -> None:
        self._config = config
        self._describe = describe
        self._ttl = ttl
        self._connect_timeout = connect_timeout
        self._nc: Client | None = None
        self._kv: KeyValue | None = None
        self._view: dict[str, NodeRecord] = {}
        self._revisions: dict[str, int] = {}  # node -> the bucket revision of its record
        self._task: asyncio.Task[None] | None = None
        self._away = False  # NATS unreachable, said once until it is back
        self._warned: set[tuple[str, str]] = set()  # (node, version) said to differ from ours
        self._nudged = asyncio.Event()
        self._watch: asyncio.Task[None] | None = None

    @property
    def node(self) -> str:
        return self._config.node

    @property
    def connected(self) -> bool:
        return self._kv is not None and self._nc is not None and self._nc.is_connected

    def jetstream(self) -> JetStreamContext | None:
        """This node's JetStream over its connection, for the fleet's other buckets; None
        while NATS is away."""
        if not self.connected or self._nc is None:
            return None
        return self._nc.jetstream(timeout=self._connect_timeout)

    def revision(self, node: str) -> int:
        """The bucket revision of ``node``'s record as last read: a new one means the node
        has published since (0: not in the view)."""
        return self._revisions.get(node, 0)

    def nodes(self) -> list[NodeRecord]:
        """The fleet as last read from the bucket, this node first; empty while NATS is away."""
        if not self.connected:
            return []
        return sorted(self._view.values(), key=lambda r: (r.name != self.node, r.name))

    def nudge(self) -> None:
        """This node's counts changed: put its record soon, not at the next refresh."""
        self._nudged.set()

    async def start(self) -> None:
        """Begin joining; returns at once (serving never waits on NATS)."""
        self._task = asyncio.create_task(self._run(), name="membership")

    async def close(self) -> None:
        """Leave the fleet: the record goes now, not when the TTL runs out. Bounded: the
        client may be mid-reconnect, and a shutdown never waits on NATS."""
        for task in (self._task, self._watch):
            if task is not None:
                task.cancel()
                await _bounded(task, self._connect_timeout * 2)
        if self._kv is not None and self.connected:
            await _bounded(asyncio.ensure_future(self._kv.delete(self.node)),
                           self._connect_timeout)
        if self._nc is not None:
            await _bounded(asyncio.ensure_future(self._nc.close()), self._connect_timeout * 2)

    # -- the loop -------------------------------------------------------------------------------

    def _interval(self) -> float:
        return self._ttl / 4

    async def _run(self) -> None:
        while self._kv is None:
            try:
                # The client itself retries an unreachable server for ever (its error_cb
                # says so once); this loop only covers JetStream refusing the bucket.
                await self._connect()
            except (TimeoutError, OSError, nats.errors.Error) as exc:
                self._say_away(f"cannot join through NATS at {self._redacted()}: "
                               f"{exc or type(exc).__name__}")
                await asyncio.sleep(self._interval())
        loop = asyncio.get_running_loop()
        while True:
            try:
                await asyncio.wait_for(self._beat(), self._ttl)
                self._say_back()
                if self._watch is None or self._watch.done():
                    self._watch = asyncio.create_task(self._follow(), name="membership-watch")
            except (TimeoutError, nats.errors.Error, OSError) as exc:
                self._say_away(f"lost NATS at {self._redacted()}: {exc or type(exc).__name__}")
            refresh = loop.time() + self._interval()
            while (left := refresh - loop.time()) > 0:
                try:
                    await asyncio.wait_for(self._nudged.wait(), left)
                except TimeoutError:
                    break
                await asyncio.sleep(NUDGE_GAP)
                self._nudged.clear()
                try:
                    await asyncio.wait_for(self._publish(), self._ttl)
                except (TimeoutError, nats.errors.Error, OSError):
                    break  # the refresh says so

    async def _connect(self) -> None:
        if self._nc is not None:  # a client whose bucket step failed: start afresh
            with contextlib.suppress(Exception):
                await self._nc.close()
        nc = await nats.connect(
            self._config.servers, connect_timeout=int(max(self._connect_timeout, 1)),
            allow_reconnect=True, max_reconnect_attempts=-1,
            reconnect_time_wait=min(self._interval(), 2.0),
            error_cb=self._quiet, disconnected_cb=self._disconnected, name=self.node)
        js = nc.jetstream(timeout=self._connect_timeout)
        config = KeyValueConfig(bucket=BUCKET, ttl=self._ttl, history=1,
                                replicas=self._config.replicas)
        try:
            kv = await js.create_key_value(config)
        except BadRequestError:
            # Made by a node with another TTL: use it as it is, rather than fight over it.
            kv = await js.key_value(BUCKET)
        self._nc, self._kv = nc, kv
        self._say_back()

    async def _publish(self) -> NodeRecord:
        assert self._kv is not None
        ours = self._describe()
        await self._kv.put(self.node, ours.encode())
        return ours

    async def _beat(self) -> None:
        self._nudged.clear()
        ours = await self._publish()
        view, revisions = await self._read()
        # What the watch applied while the read ran is newer than the read: kept (a put), or
        # the record dropped (a delete).
        for name, revision in self._revisions.items():
            if name in view and revision > revisions[name]:
                if name in self._view:
                    view[name], revisions[name] = self._view[name], revision
                else:
                    del view[name], revisions[name]
        self._view, self._revisions = view, revisions
        for record in self._view.values():
            seen = (record.name, record.version)
            if record.version != ours.version and seen not in self._warned:
                self._warned.add(seen)
                log.warning("node %s runs switchboard %s, this node %s: listed, but mixed "
                            "versions may disagree on what they send each other",
                            record.name, record.version, ours.version)

    async def _read(self) -> tuple[dict[str, NodeRecord], dict[str, int]]:
        """The last record of every key still in the bucket, and its revision."""
        assert self._kv is not None
        view: dict[str, NodeRecord] = {}
        revisions: dict[str, int] = {}
        watcher = await self._kv.watchall(ignore_deletes=True)
        try:
            while True:
                entry = await watcher.updates(  # type: ignore[no-untyped-call]
                    timeout=self._connect_timeout)
                if entry is None:  # the end of what is stored now
                    break
                if entry.value:
                    try:
                        record = NodeRecord.decode(entry.value)
                    except (ValueError, TypeError) as exc:
                        log.warning("node %s published a record we cannot read: %s",
                                    entry.key, exc)
                        continue
                    view[record.name] = record
                    revisions[record.name] = entry.revision or 0
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]
        return view, revisions

    async def _follow(self) -> None:
        """Apply every record put between refreshes (records that expire are dropped by the
        refresh's read: JetStream marks no expiry in the stream)."""
        assert self._kv is not None
        try:
            watcher = await self._kv.watchall()
        except (TimeoutError, nats.errors.Error, OSError) as exc:
            log.debug("cannot watch the node records (the next refresh tries again): %s", exc)
            return
        try:
            async for entry in watcher:
                if entry is None:
                    continue  # the end of the initial values
                revision = entry.revision or 0
                if revision <= self._revisions.get(entry.key, 0):
                    continue  # older than what the view has (a read, or a replay)
                if entry.operation is not None:  # a node that left: gone now, not at the read
                    self._view.pop(entry.key, None)
                    self._revisions[entry.key] = revision  # an older put cannot bring it back
                    continue
                try:
                    record = NodeRecord.decode(entry.value or b"")
                except (ValueError, TypeError):
                    continue  # said by the read
                self._view[record.name] = record
                self._revisions[record.name] = revision
        except (TimeoutError, nats.errors.Error, OSError) as exc:
            log.debug("the watch of the node records ended: %s", exc)
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]

    # -- saying it once -------------------------------------------------------------------------

    def _say_away(self, message: str) -> None:
        if not self._away:
            log.warning("%s; serving this node's own models until it is back", message)
            self._away = True

    def _say_back(self) -> None:
        if self._away:
            log.warning("NATS at %s is back; node %s rejoined", self._redacted(), self.node)
            self._away = False

    def _redacted(self) -> str:
        return self._config.redacted

    async def _quiet(self, exc: Exception) -> None:
        # Called at every failed attempt to connect or reconnect: said once, then quiet.
        log.debug("nats: %s", exc)
        if self._nc is None or not self._nc.is_connected:
            self._say_away(f"cannot reach NATS at {self._redacted()}: "
                           f"{exc or type(exc).__name__}")

    async def _disconnected(self) -> None:
        self._say_away(f"lost NATS at {self._redacted()}")


async def _bounded(task: asyncio.Future[Any], seconds: float) -> None:
    """Wait for ``task`` at most ``seconds``; past that it is cancelled and left, since
    awaiting a cancellation the client does not honour would wait for ever."""
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        task.cancel()
        log.warning("NATS did not let go within %.0f s; leaving it", seconds)
    elif not task.cancelled() and task.exception() is not None:
        log.debug("nats: while leaving: %s", task.exception())
