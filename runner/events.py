"""State changes as events, for anyone watching (the operator console's ``/api/events``).

Publishing never waits and costs next to nothing with nobody subscribed, so it can sit on the
scheduler's and the relay's paths. Each subscriber has a bounded buffer: when a slow reader
lets it fill, the oldest events are dropped and the next one it reads says how many, so a
stalled browser tab never holds memory or time of the gateway's.

Kinds: ``runner`` (a runner's state: starting, ready, stopping, stopped, failed), ``queue``
(requests waiting for a load), ``memory`` (periodic RAM, GPU and per-runner samples),
``request`` (one answered request), ``pull`` (progress of a pull), ``log`` (a runner's output
line, only to subscribers that asked for that runner).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

DEFAULT_BUFFER = 256
_RECENT_REQUESTS = 50


@dataclass(frozen=True)
class Event:
    kind: str
    data: dict[str, Any]
    at: float = field(default_factory=time.time)


class Subscription:
    """One reader's view: a bounded queue of events, oldest dropped first when full."""

    def __init__(self, bus: EventBus, size: int, logs: str | None) -> None:
        self._bus = bus
        self._events: deque[Event] = deque()
        self._size = size
        self.logs = logs  # the runner key whose output lines this reader wants
        self.dropped = 0
        self.closed = False
        self._ready = asyncio.Event()

    def offer(self, event: Event) -> None:
        if len(self._events) >= self._size:
            self._events.popleft()
            self.dropped += 1
        self._events.append(event)
        self._ready.set()

    async def next(self) -> Event | None:
        """The next event, or a ``dropped`` notice first after an overflow; None once the bus
        has closed."""
        while not self._events:
            if self.closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        if self.dropped:
            count, self.dropped = self.dropped, 0
            return Event("dropped", {"count": count})
        return self._events.popleft()

    async def batch(self, linger: float) -> list[Event]:
        """The next event and all that arrive within ``linger`` seconds after it: a reader
        that sends each batch as one write costs the gateway a handful of writes a second,
        however many requests it answers."""
        first = await self.next()
        if first is None:
            return []
        if linger > 0:
            await asyncio.sleep(linger)
        events = [first]
        while self._events or self.dropped:
            event = await self.next()
            if event is not None:
                events.append(event)
        return events

    def close(self) -> None:
        self._bus._subscribers.discard(self)

    def _end(self) -> None:
        self.closed = True
        self._ready.set()


class EventBus:
    def __init__(self) -> None:
        self._subscribers: set[Subscription] = set()
        self._closed = False
        self.recent_requests: deque[Event] = deque(maxlen=_RECENT_REQUESTS)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    @property
    def watched(self) -> bool:
        """Whether anyone listens: callers skip building events nobody would read."""
        return bool(self._subscribers)

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        event = Event(kind, data)
        if kind == "request":
            self.recent_requests.append(event)
        for subscriber in self._subscribers:
            if kind != "log" or subscriber.logs == data.get("runner"):
                subscriber.offer(event)

    def subscribe(self, size: int = DEFAULT_BUFFER, logs: str | None = None) -> Subscription:
        subscription = Subscription(self, size, logs)
        self._subscribers.add(subscription)
        if self._closed:
            subscription._end()
        return subscription

    def close(self) -> None:
        """End every subscription once its buffered events are read (the server is going):
        an open console must not hold a shutdown for its grace period."""
        self._closed = True
        for subscriber in list(self._subscribers):
            subscriber._end()

    async def stream(self, subscription: Subscription,
                     linger: float = 0.0) -> AsyncGenerator[list[Event], None]:
        """Batches of events as they come (see :meth:`Subscription.batch`) until the bus
        closes; closes the subscription however the reader leaves."""
        try:
            while batch := await subscription.batch(linger):
                yield batch
        finally:
            subscription.close()
