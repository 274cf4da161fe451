"""This node in a fleet: the local service, plus membership and routing to the other nodes.

A :class:`FleetModelService` is a :class:`~runner.local_service.LocalModelService` whose
``acquire`` may hand back a lease on another node: the relay then posts the request, already
translated, to that node's ``/_node/`` hop with the cluster key, and streams the answer back
as it would a local runner's. The choice is :func:`runner.fleet_routing.choose`, on the
membership view. A request another node handed over (``RunnerOptions.here``) is served here
and only here, so a request crosses at most one hop.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from urllib.parse import urlsplit

from runner.cluster_config import ClusterConfig
from runner.errors import (
    ModelNotFoundError,
    NodesUnreachableError,
    NoRoomError,
    ServiceError,
)
from runner.fleet_routing import Route, choose, room
from runner.load_claims import LoadClaims, claim_key
from runner.local_service import LocalModelService
from runner.membership import Membership
from runner.service_types import PRIMARY, Lease, NodeRecord, RunnerInfo, RunnerOptions, hop_prefix
from runner.settings import Settings

log = logging.getLogger(__name__)

# Connections one node may hold to another: the serving node queues beyond its slots.
REMOTE_CONNECTIONS = 64


class FleetModelService(LocalModelService):
    def __init__(self, settings: Settings, fleet: ClusterConfig) -> None:
        super().__init__(settings, node=fleet.node)
        self._fleet = fleet
        self._membership = Membership(fleet, self.record, settings.node_ttl)
        self._claims = LoadClaims(self._membership, settings.node_ttl, fleet.replicas)
        self._rng = random.Random()
        # Nodes a hop to failed: (monotonic until, the revision of their record then). A dead
        # node's record outlives it by up to a TTL and a read; it is avoided until that record
        # is gone or it publishes a new one, and for a TTL at least.
        self._avoid: dict[str, tuple[float, int]] = {}

    async def start(self) -> None:
        await super().start()
        await self._membership.start()

    async def close(self) -> None:
        try:
            await self._claims.close()
            await self._membership.close()  # out of the fleet before the runners go
        finally:
            await super().close()

    def advertise_url(self) -> str:
        return self._fleet.advertise_url

    # -- the fleet's view ---------------------------------------------------------------------

    def nodes(self) -> list[NodeRecord]:
        return self._membership.nodes() or [self.record()]

    def _others(self) -> list[NodeRecord]:
        records = [record for record in self._membership.nodes() if record.name != self.node]
        if self._avoid:
            return [record for record in records if not self._avoided(record.name)]
        return records

    def _avoided(self, node: str) -> bool:
        avoid = self._avoid.get(node)
        if avoid is None:
            return False
        until, revision = avoid
        if time.monotonic() < until or self._membership.revision(node) == revision:
            return True
        del self._avoid[node]  # it has published since, and a TTL has passed: try it again
        return False

    def _unreachable_with(self, model: str) -> list[str]:
        """The avoided nodes that have ``model``."""
        return [record.name for record in self._membership.nodes()
                if record.name in self._avoid and self._avoided(record.name)
                and model in record.models]

    def fleet_runners(self) -> list[RunnerInfo]:
        return self.loaded() + [runner for record in self._others() for runner in record.runners]

    def hop_failed(self, lease: Lease) -> None:
        log.warning("node %s did not answer; routing around it until it publishes again "
                    "(%.0f s at least)", lease.node, self._settings.node_ttl)
        self._avoid[lease.node] = (time.monotonic() + self._settings.node_ttl,
                                   self._membership.revision(lease.node))

    def names(self) -> list[str]:
        names = super().names()
        seen = set(names)
        for record in self._others():
            for name in record.models:
                if name not in seen:
                    seen.add(name)
                    names.append(name)
        return names

    def canonical(self, name: str) -> str | None:
        local = super().canonical(name)
        if local is not None:
            return local
        return name if any(name in r.models for r in self._others()) else None

    # -- routing ------------------------------------------------------------------------------

    def _replicas(self, model: str, others: list[NodeRecord]) -> int:
        """Copies the fleet may run of ``model``: its config here, else what its nodes say."""
        configured = self._catalog.configured(model)
        if configured is not None:
            return configured[1].replicas
        return max((record.replicas.get(model, 1) for record in others), default=1)

    def acquire(self, model: str, options: RunnerOptions | None = None,
                keep_alive: float | None = None) -> AbstractAsyncContextManager[Lease]:
        options = options or RunnerOptions()
        if options.here:  # a load another node placed here: refused if it would wait (503)
            return self._local(model, replace(options, wait_for_room=False), keep_alive)
        canonical = super().canonical(model)
        name = canonical or model
        me = self._me()
        others = self._others()
        if others:  # a load that would wait here is a 503: another node may have room soon
            options = replace(options, wait_for_room=False)
        replicas = self._replicas(name, others)
        route = choose(me, others, name, options.mode, canonical is not None, self._rng,
                       replicas, affinity=options.affinity)
        if route is None:
            unreachable = self._unreachable_with(name) if canonical is None else []
            if unreachable:  # its nodes failed a hop just now: not a 404, a retry later
                return _refused(NodesUnreachableError(
                    model, unreachable, max(int(self._settings.node_ttl), 1)))
            return _refused(ModelNotFoundError(model))
        if route.load:
            return self._claimed(route, me, others, name, model, options, keep_alive, replicas)
        return self._routed(route, name, model, options, keep_alive)

    @contextlib.asynccontextmanager
    async def _local(self, model: str, options: RunnerOptions, keep_alive: float | None
                     ) -> AsyncIterator[Lease]:
        """A lease on this node's runners; the fleet hears of the busy count's change at once
        (``Membership.nudge``), not at the next refresh."""
        async with super().acquire(model, options, keep_alive) as lease:
            self._membership.nudge()
            try:
                yield lease
            finally:
                self._membership.nudge()

    def _me(self) -> NodeRecord:
        return NodeRecord(self.node, self.advertise_url(), "", runners=self.runners_now(),
                          queue_depth=self.queue_depth, memory=self._published_memory)

    def _routed(self, route: Route, name: str, model: str, options: RunnerOptions,
                keep_alive: float | None) -> AbstractAsyncContextManager[Lease]:
        if route.node is None:
            return self._local(model, options, keep_alive)
        log.debug("%s goes to node %s (%s)", model, route.node.name, route.reason)
        return self._remote(route.node, name, model, options)

    @contextlib.asynccontextmanager
    async def _claimed(self, route: Route, me: NodeRecord, others: list[NodeRecord], name: str,
                       model: str, options: RunnerOptions, keep_alive: float | None,
                       replicas: int) -> AsyncIterator[Lease]:
        """A request that starts a copy: the load is claimed fleet-wide first. Lost to a
        claim for another node, the request goes where that load (or a copy) will serve it."""
        key = claim_key(name, str(options.mode or PRIMARY))
        target = route.node.name if route.node is not None else self.node
        holder = await self._claims.take(key, target)
        if holder is not None and holder != target:
            log.debug("a load of %s is claimed for %s; not starting another", name, holder)
            again = choose(me, others, name, options.mode, route.node is None, self._rng,
                           replicas, loading_at=holder)
            route = again if again is not None else route
            key = ""  # not ours to release
        elif holder is not None:
            key = ""  # claimed for the same node by another: it loads once there
        try:
            if route.node is None:
                async with contextlib.AsyncExitStack() as stack:
                    try:
                        lease = await stack.enter_async_context(
                            self._local(model, options, keep_alive))
                    except NoRoomError:
                        # No room here without waiting: the roomiest other node with the
                        # model may have it (it says 503 too if not). Still one hop at most.
                        elsewhere = _roomiest_with(others, name)
                        if elsewhere is None:
                            raise
                        log.info("%s: no room on this node; loading on node %s", name,
                                 elsewhere.name)
                        lease = await stack.enter_async_context(
                            self._remote(elsewhere, name, model, options))
                    if key:  # the copy is up (or placed elsewhere): the next load may start
                        await self._claims.release(key)
                        key = ""
                    yield lease
            else:
                if key:  # said once per load, by the node that claimed it
                    log.info("%s: %s on node %s", name, route.reason, route.node.name)
                async with self._remote(route.node, name, model, options) as lease:
                    yield lease
        finally:
            if key:
                await self._claims.release(key)

    @contextlib.asynccontextmanager
    async def _remote(self, node: NodeRecord, canonical: str, requested: str,
                      options: RunnerOptions) -> AsyncIterator[Lease]:
        host, port = _address(node.url)
        yield Lease(canonical, requested, host, port, self._fleet.key or "",
                    REMOTE_CONNECTIONS, node=node.name, path_prefix=hop_prefix(options.mode))


@functools.lru_cache(maxsize=256)
def _address(url: str) -> tuple[str, int]:
    """(host, port) of a node's advertised URL, parsed once per URL, not per request."""
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def _roomiest_with(others: list[NodeRecord], model: str) -> NodeRecord | None:
    having = [record for record in others if model in record.models and room(record) > 0]
    return max(having, key=lambda record: (room(record), record.name)) if having else None


@contextlib.asynccontextmanager
async def _refused(error: ServiceError) -> AsyncIterator[Lease]:
    raise error
    yield  # an async generator, so the refusal comes when the lease is taken
