"""The request-body bounds: a body that is not in within the timeout is a 408 in the route's
shape; once it is in, the app may wait on receive (for the client leaving) as long as it
likes."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from starlette.types import Message, Receive, Scope, Send

from gateway.body_limit import BodyLimit
from gateway.errors import APIError


def _scope(path: str = "/v1/chat/completions") -> Scope:
    return {"type": "http", "method": "POST", "path": path, "headers": []}


def _client(*messages: Message) -> Receive:
    """Hands out ``messages`` in turn, then waits forever, as a client that sends no more."""
    queue: asyncio.Queue[Message] = asyncio.Queue()
    for message in messages:
        queue.put_nowait(message)
    return queue.get


async def _no_send(message: Message) -> None:
    raise AssertionError(f"nothing should be sent here: {message}")


async def test_a_body_not_in_within_the_timeout_raises_a_408() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert (await receive())["body"] == b"{"
        await receive()  # the rest never comes

    limited = BodyLimit(app, limit=None, timeout=0.2)
    started = asyncio.get_running_loop().time()
    with pytest.raises(APIError) as caught:
        await limited(_scope(), _client({"type": "http.request", "body": b"{",
                                         "more_body": True}), _no_send)
    assert 0.2 <= asyncio.get_running_loop().time() - started < 0.5
    assert caught.value.status == 408
    assert orjson.loads(caught.value.body())["error"]["code"] == "body_timeout"


async def test_once_the_body_is_in_waiting_for_the_client_to_leave_is_unbounded() -> None:
    # A relay waits on receive for the client leaving for as long as its answer streams.
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert (await receive())["more_body"] is False
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(receive(), 0.4)  # twice the body timeout, no 408

    limited = BodyLimit(app, limit=None, timeout=0.2)
    await limited(_scope(), _client({"type": "http.request", "body": b"{}",
                                     "more_body": False}), _no_send)


async def test_no_timeout_means_none() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(receive(), 0.3)

    await BodyLimit(app, limit=None, timeout=0)(_scope(), _client(), _no_send)
