"""The event bus: order, bounded buffers for slow readers, and cleanup."""

from __future__ import annotations

import asyncio
import time

from runner.events import Event, EventBus


def _data(event: Event | None) -> dict[str, object]:
    assert event is not None
    return event.data


async def test_events_reach_every_subscriber_in_order() -> None:
    bus = EventBus()
    first, second = bus.subscribe(), bus.subscribe()
    for n in range(3):
        bus.publish("queue", {"depth": n})
    for subscription in (first, second):
        assert [_data(await subscription.next())["depth"] for _ in range(3)] == [0, 1, 2]


async def test_a_slow_subscriber_loses_its_oldest_events_and_is_told_how_many() -> None:
    bus = EventBus()
    slow = bus.subscribe(size=10)
    started = time.perf_counter()
    for n in range(10_000):  # a reader that never reads: publishing still never waits
        bus.publish("queue", {"depth": n})
    assert time.perf_counter() - started < 1.0
    notice = await slow.next()
    assert notice is not None and notice.kind == "dropped" and notice.data == {"count": 9_990}
    assert [_data(await slow.next())["depth"] for _ in range(10)] == list(range(9_990, 10_000))


async def test_log_lines_go_only_to_subscribers_of_that_runner() -> None:
    bus = EventBus()
    of_a, of_b, neither = bus.subscribe(logs="a"), bus.subscribe(logs="b"), bus.subscribe()
    bus.publish("log", {"runner": "a", "line": "hello"})
    assert _data(await of_a.next())["line"] == "hello"
    assert not of_b._events and not neither._events


async def test_a_reader_leaving_closes_its_subscription() -> None:
    bus = EventBus()
    subscription = bus.subscribe()
    reader = bus.stream(subscription)

    async def read_one() -> str:
        return (await reader.__anext__())[0].kind

    task = asyncio.create_task(read_one())
    await asyncio.sleep(0.01)
    assert bus.watched
    bus.publish("queue", {"depth": 1})
    assert await task == "queue"
    await reader.aclose()  # what the SSE response does when the client disconnects
    assert not bus.watched and bus.subscribers == 0


async def test_recent_requests_are_kept_for_late_subscribers_and_bounded() -> None:
    bus = EventBus()
    for n in range(80):
        bus.publish("request", {"n": n})
    assert [e.data["n"] for e in bus.recent_requests] == list(range(30, 80))


async def test_a_batch_gathers_what_arrives_while_it_lingers() -> None:
    bus = EventBus()
    subscription = bus.subscribe(size=5)

    async def later() -> None:
        await asyncio.sleep(0.01)
        for n in range(1, 8):
            bus.publish("queue", {"depth": n})

    bus.publish("queue", {"depth": 0})
    task = asyncio.create_task(later())
    batch = await subscription.batch(linger=0.05)
    await task
    # The first, then the overflow notice, then the newest that fit the buffer.
    assert [(e.kind, e.data) for e in batch][:2] == [("queue", {"depth": 0}),
                                                    ("dropped", {"count": 2})]
    assert [e.data["depth"] for e in batch[2:]] == [3, 4, 5, 6, 7]


async def test_closing_the_bus_ends_every_stream_after_what_it_holds() -> None:
    bus = EventBus()
    subscription = bus.subscribe()
    bus.publish("queue", {"depth": 1})
    bus.close()
    batches = [batch async for batch in bus.stream(subscription)]
    assert [[e.kind for e in batch] for batch in batches] == [["queue"]]
    assert bus.subscribers == 0
    late = bus.subscribe()
    assert await late.next() is None  # a stream opened while the server drains ends at once
