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
import logging
import random
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from urllib.parse import urlsplit

from runner.cluster_config import ClusterConfig
from runner.errors import ModelNotFoundError
from runner.fleet_routing import choose
from runner.local_service import LocalModelService
from runner.membership import Membership
from runner.service_types import Lease, NodeRecord, RunnerOptions, hop_prefix
from runner.settings import Settings

log = logging.getLogger(__name__)

# Connections one node may hold to another: the serving node queues beyond its slots.
REMOTE_CONNECTIONS = 64


class FleetModelService(LocalModelService):
    def __init__(self, settings: Settings, fleet: ClusterConfig) -> None:
        super().__init__(settings, node=fleet.node)
        self._fleet = fleet
        self._membership = Membership(fleet, self.record, settings.node_ttl)
        self._rng = random.Random()
        # Nodes a hop to failed, until (monotonic): their record may outlive them by a TTL.
        self._avoid: dict[str, float] = {}

    async def start(self) -> None:
        await super().start()
        await self._membership.start()

    async def close(self) -> None:
        try:
            await self._membership.close()  # out of the fleet before the runners go
        finally:
            await super().close()

    def advertise_url(self) -> str:
        return self._fleet.advertise_url

    # -- the fleet's view ---------------------------------------------------------------------

    def nodes(self) -> list[NodeRecord]:
        return self._membership.nodes() or [self.record()]

    def _others(self) -> list[NodeRecord]:
        now = time.monotonic()
        return [record for record in self._membership.nodes()
                if record.name != self.node and self._avoid.get(record.name, 0.0) <= now]

    def hop_failed(self, lease: Lease) -> None:
        log.warning("node %s did not answer; routing around it for %.0f s", lease.node,
                    self._settings.node_ttl)
        self._avoid[lease.node] = time.monotonic() + self._settings.node_ttl

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

    def acquire(self, model: str, options: RunnerOptions | None = None,
                keep_alive: float | None = None) -> AbstractAsyncContextManager[Lease]:
        options = options or RunnerOptions()
        if options.here:
            return super().acquire(model, options, keep_alive)
        canonical = super().canonical(model)
        me = NodeRecord(self.node, self.advertise_url(), "", runners=self.node_runners())
        route = choose(me, self._others(), canonical or model, options.mode,
                       canonical is not None, self._rng)
        if route is None:
            return _refused(model)
        if route.node is None:
            return super().acquire(model, options, keep_alive)
        log.debug("%s goes to node %s (%s)", model, route.node.name, route.reason)
        return self._remote(route.node, canonical or model, model, options)

    @contextlib.asynccontextmanager
    async def _remote(self, node: NodeRecord, canonical: str, requested: str,
                      options: RunnerOptions) -> AsyncIterator[Lease]:
        url = urlsplit(node.url)
        port = url.port or (443 if url.scheme == "https" else 80)
        yield Lease(canonical, requested, url.hostname or "", port, self._fleet.key or "",
                    REMOTE_CONNECTIONS, node=node.name, path_prefix=hop_prefix(options.mode))


@contextlib.asynccontextmanager
async def _refused(model: str) -> AsyncIterator[Lease]:
    raise ModelNotFoundError(model)
    yield  # an async generator, so the refusal comes when the lease is taken
