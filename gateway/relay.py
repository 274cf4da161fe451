"""Relay one API request to a runner and its response back, bytes as they arrive.

The body goes upstream untouched unless a field had to be removed, and the response comes back
untouched unless the client named the model by an alias (then ``model`` is rewritten to the name
it sent) or the runner sent an error (then it is put in the shape of the route's API family).
A route of another API (Ollama's) passes a :class:`Translation`, which turns the runner's OpenAI
answer into its own, event by event. A client that goes away drops the upstream connection at
once, which stops llama-server's generation for it; so does one that stops reading, after
``client_write_timeout``, and an answer (or a streamed event) past ``max_answer_bytes``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import replace
from typing import Any, Protocol, runtime_checkable

import orjson
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from gateway.affinity import opening_key
from gateway.allowlist import GENERATING, check_fits
from gateway.direct_write import chunked_writer, client_closer
from gateway.errors import (
    APIError,
    Dialect,
    dialect_of,
    normalise_error,
    runner_error,
    service_errors,
    stream_error_event,
)
from gateway.images import Image, ImageCheck, find_images
from gateway.metrics import Metrics, parse_usage
from gateway.request_body import require_model, take_keep_alive
from gateway.request_defaults import apply_defaults, check_lora
from gateway.upstream import (
    UpstreamBusyError,
    UpstreamError,
    UpstreamPool,
    UpstreamResponse,
    UpstreamTooLargeError,
)
from runner.service import KEEP_ALIVE_HEADER, Lease, ModelService, RunnerOptions
from runner.units import format_bytes

log = logging.getLogger(__name__)

_JSON = b"application/json"
_SSE = b"text/event-stream"
# Proxies must not hold chunks back (nginx reads X-Accel-Buffering).
_SSE_HEAD = [(b"content-type", _SSE), (b"cache-control", b"no-cache"),
             (b"x-accel-buffering", b"no")]
_SSE_ERROR_PREFIX = b'data: {"error"'
_ERROR_EVENTS = (_SSE_ERROR_PREFIX, b"error:")  # the second: older llama-servers' error lines
_LATER_ERROR_EVENTS = tuple(b"\n\n" + prefix for prefix in _ERROR_EVENTS)


def _has_error_event(chunk: bytes) -> bool:
    """Whether an error event starts anywhere in ``chunk``: two events may come in one read.
    (A token's text cannot hold the prefix: inside JSON its quotes are escaped.)"""
    return b"error" in chunk and (chunk.startswith(_ERROR_EVENTS)  # one scan, most chunks
                                  or _LATER_ERROR_EVENTS[0] in chunk
                                  or _LATER_ERROR_EVENTS[1] in chunk)
WATCH_AFTER = 0.005  # seconds before a request starts watching for its client to leave
# What a translation raises on an answer it cannot read (orjson's errors are ValueErrors).
_UNTRANSLATABLE = (ValueError, KeyError, TypeError, IndexError, AttributeError)
_SMALL_ANSWER = 64 * 1024  # what a transport takes without waiting for its client
_UNLIMITED = 1 << 62  # max_answer_bytes unset: the per-chunk check stays a comparison


class _EventTooLargeError(Exception):
    """An SSE event from the runner grew past max_answer_bytes."""


class _Events:
    """Cuts a relayed SSE stream into whole events: the start of one not whole yet is held
    back until its separator comes (llama-server sends each event whole, so this is rare), so
    that nothing sent ends mid-event and an error that ends the stream is an event of its own.
    An event (the bytes between two blank-line separators) past ``limit`` raises
    _EventTooLargeError; at most that much is held."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit or _UNLIMITED
        self.open = 0  # bytes of the event in progress, held back
        self._held: list[bytes] = []  # a list: an event in many pieces is joined once

    def whole(self, chunk: bytes) -> bytes:
        """What of ``chunk`` and the bytes held before it ends with a whole event; maybe
        nothing."""
        end = self.open + len(chunk)
        if end > self.limit:
            self._check(chunk)
        cut = chunk.rfind(b"\n\n") + 2
        if cut < 2:
            self._held.append(chunk)
            self.open = end
            return b""
        # A separator split across two pieces goes unseen here: two events may then count
        # as one against the limit, which is meant for megabytes.
        self.open = len(chunk) - cut
        events = b"".join([*self._held, chunk[:cut]]) if self._held else chunk[:cut]
        self._held = [chunk[cut:]] if self.open else []
        return events

    def _check(self, chunk: bytes) -> None:
        events = chunk.split(b"\n\n")
        if self.open + len(events[0]) > self.limit or any(
                len(event) > self.limit for event in events[1:]):
            self._held = []
            raise _EventTooLargeError

    def rest(self) -> bytes:
        """What was held when the stream ended: an event with no separator after it."""
        return b"".join(self._held)


def _model_rewriter(lease: Lease) -> tuple[bytes, bytes] | None:
    if lease.requested == lease.model:
        return None
    return (b'"model":' + orjson.dumps(lease.model), b'"model":' + orjson.dumps(lease.requested))


async def _cancel_on_disconnect(receive: Receive, exchange: asyncio.Task[Any],
                                left: list[bool]) -> None:
    """Cancel ``exchange`` when the client goes: whether the relay is still waiting for the
    response head (a non-streamed generation sends nothing until it ends) or streaming, the
    cancellation closes the runner's connection, and llama-server stops generating."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            left.append(True)
            exchange.cancel()
            return


class Translation(Protocol):
    """Turns a runner's successful answer into what the client's API expects, for one request."""

    def begin(self, lease: Lease, waited: float) -> None:
        """The runner is ready; ``waited`` seconds went to queueing and loading."""

    def whole(self, body: bytes) -> bytes:
        """A successful unstreamed answer."""


@runtime_checkable
class StreamTranslation(Translation, Protocol):
    """A translation of streamed answers too, SSE event by event."""

    media_type: bytes  # of the streamed answer

    def event(self, data: bytes) -> bytes:
        """One SSE event's data (never ``[DONE]``); what to send for it, maybe nothing."""

    def end(self) -> bytes:
        """What to send once the runner's stream ended."""

    def failed(self, message: str) -> bytes:
        """What to send when the stream broke after its head went out."""


class _HopFailed(Exception):
    """The node a lease named could not be reached: the request may be tried elsewhere."""

    def __init__(self, lease: Lease, error: APIError) -> None:
        super().__init__(error.message)
        self.lease = lease
        self.error = error


class _LoadPinger:
    """While a stream waits for its model to load: after ``interval`` seconds it sends the
    response head, then an SSE comment every ``interval``, so proxies and SDKs with read
    timeouts see a live connection (a 20 s load would otherwise send nothing for 20 s). A
    request whose model is ready never starts its task: the timer is cancelled first."""

    def __init__(self, send: Send, interval: float) -> None:
        self._send = send
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self.sent = False
        self._timer = asyncio.get_running_loop().call_later(interval, self._begin)

    def _begin(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        await self._send({"type": "http.response.start", "status": 200, "headers": _SSE_HEAD})
        self.sent = True
        while True:
            await self._send({"type": "http.response.body", "body": b": loading the model\n\n",
                              "more_body": True})
            await asyncio.sleep(self._interval)

    async def stop(self) -> None:
        self._timer.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _with_slot(body: bytes, slot: int) -> bytes:
    """The body sent to one slot of the runner: the one its restored cache is in."""
    data = orjson.loads(body)
    data["id_slot"] = slot
    return orjson.dumps(data)


def _server_timing(waited: float, loading: float) -> bytes:
    """The Server-Timing header value: time queued, and time loading the model, in ms."""
    queued = max(waited - loading, 0.0)
    return f"queue;dur={queued * 1000:.1f}, load;dur={loading * 1000:.1f}".encode()


def _sse_data(event: bytes) -> bytes | None:
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            return line[5:].strip()
    return None


class Relay:
    """An ASGI response that leases a runner, forwards the request and streams the answer."""

    @classmethod
    def for_request(
        cls,
        request: Request,
        body: bytes,
        data: dict[str, Any],
        path: bytes,
        stream: bool,
        edited: bool = False,
        options: RunnerOptions | None = None,
        translation: Translation | None = None,
    ) -> Relay:
        """The relay for a validated request, to a runner of the model ``data`` names (every
        body bound for a runner names one). ``keep_alive`` is ours, so it is taken out here
        for every route; the client's bytes go upstream untouched unless something was
        removed or the route ``edited`` ``data``."""
        model = require_model(data)
        keep_alive, present = take_keep_alive(data)
        state = request.app.state
        # Every body bound for a runner passes the allowlist here, whatever its route.
        vetted = state.allowlist.vet(path, data)
        if present or edited or vetted.edited:
            body = orjson.dumps(data)
        settings = state.settings
        if (settings.cluster and settings.affinity_min_bytes and path in GENERATING
                and vetted.prompt_bytes >= settings.affinity_min_bytes
                and not (options is not None and options.here)):  # a hop's node: routed
            key = opening_key(data)
            if key is not None:
                options = replace(options or RunnerOptions(), affinity=key)
        relay = cls(state.service, state.upstream, model, path, body, stream, keep_alive,
                    options, state.metrics, settings.stream_idle_timeout or None,
                    dialect_of(request.scope["path"]), translation, settings.load_ping or None,
                    settings.client_write_timeout or None, settings.max_answer_bytes,
                    (data, vetted.prompt_bytes))
        images = find_images(data)
        if images:  # checked (and URLs fetched) before a runner is asked for
            relay._images = (images, state.image_check)
        return relay

    def __init__(
        self,
        service: ModelService,
        pool: UpstreamPool,
        model: str,
        path: bytes,
        body: bytes,
        stream: bool,
        keep_alive: float | None = None,
        options: RunnerOptions | None = None,
        metrics: Metrics | None = None,
        idle_timeout: float | None = None,
        dialect: Dialect = Dialect.OPENAI,
        translation: Translation | None = None,
        load_ping: float | None = None,
        write_timeout: float | None = None,
        max_answer: int | None = None,
        prompt: tuple[dict[str, Any], int] = ({}, 0),
    ) -> None:
        self._service = service
        self._pool = pool
        self._model = model
        self._path = path
        self._body = body
        self._stream = stream
        self._keep_alive = keep_alive
        self._options = options
        self._metrics = metrics
        # Bounds silences inside a stream, not the wait for its head: llama-server sends the
        # head with the first token, after a prompt that may take minutes on a CPU. A runner
        # that stops altogether is caught sooner by the health checks; this catches one that
        # still answers them but whose generation is stuck.
        self._idle_timeout = idle_timeout
        # A client that reads nothing held a runner slot (and a relay connection) for as long
        # as it liked: the runner is paused by backpressure then, never silent.
        self._write_timeout = write_timeout
        self._max_answer = max_answer
        self._dialect = dialect
        self._translation = translation
        # Pings are SSE comments: only SSE streams get them (Ollama's NDJSON has no comments).
        self._load_ping = load_ping if stream and (
            translation is None or getattr(translation, "media_type", None) == _SSE
        ) else None
        # The body's fields and its prompt's text bytes, for the context check once the
        # runner (and so its context) is known.
        self._prompt = prompt
        self._timing: list[tuple[bytes, bytes]] = []
        self._head_sent = False
        self._state: dict[str, Any] | None = None
        self._scope: Scope | None = None
        self._task: asyncio.Task[Any] | None = None
        self._watchers: list[asyncio.Task[None]] = []
        self._cut = False
        self._images: tuple[list[Image], ImageCheck] | None = None
        # perf_counter() times, for /metrics: the request's start, its runner ready, the
        # answer's head (a streamed answer's head comes with its first token).
        self._began = self._ready_at = self._head_at = 0.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._began = time.perf_counter()
        self._state = scope.get("state")
        self._scope = scope
        if self._state is not None:
            self._state["model"] = self._model  # for the access log and the console
        task = self._task = asyncio.current_task()
        assert task is not None
        left: list[bool] = []
        watchers = self._watchers

        def watch() -> None:
            watchers.append(asyncio.create_task(_cancel_on_disconnect(receive, task, left)))

        # From the start, not once a runner is leased: a client that gives up while its
        # request is queued or its model loads leaves the queue then, instead of being
        # relayed to the runner later for nobody. Most stub-fast exchanges end within a few
        # milliseconds, and a watcher task for each would be a fifth of the relay's CPU, so
        # only requests still running after WATCH_AFTER get one.
        timer = asyncio.get_running_loop().call_later(WATCH_AFTER, watch)
        try:
            await self._lease_and_relay(send)
        except asyncio.CancelledError:
            if not left and not self._cut:
                raise  # shutdown, not the client
            task.uncancel()
            if not self._cut:  # a client cut off was logged as it was
                log.info("client left; cancelled its request for %s", self._model)
        finally:
            timer.cancel()
            for watcher in watchers:
                watcher.cancel()

    async def _lease_and_relay(self, send: Send) -> None:
        pinger = _LoadPinger(send, self._load_ping) if self._load_ping else None
        try:
            if self._images is not None:
                images, check = self._images
                if await check.prepare(self._service, self._model, images):
                    self._body = orjson.dumps(self._prompt[0])  # fetched URLs are inline now
            with service_errors(self._model):
                for attempt in (1, 2):
                    try:
                        await self._lease_once(send, pinger)
                        break
                    except _HopFailed as failed:
                        # Another node took the lease but never answered: nothing of the
                        # answer left, so the request may go once more, elsewhere.
                        self._service.hop_failed(failed.lease)
                        if attempt == 2:
                            raise failed.error from None
                        log.warning("node %s did not answer for %s; trying once more",
                                    failed.lease.node, self._model)
        except APIError as exc:
            if pinger is not None:
                await pinger.stop()
                self._head_sent = self._head_sent or pinger.sent
            if not self._head_sent:
                raise
            # The head went out with the pings: the error can only travel in the stream.
            with contextlib.suppress(OSError):
                await send({"type": "http.response.body", "more_body": False,
                            "body": stream_error_event(self._dialect, exc.message)})
        finally:
            if pinger is not None:
                await pinger.stop()

    async def _lease_once(self, send: Send, pinger: _LoadPinger | None) -> None:
        lease_cm = self._service.acquire(self._model, self._options, self._keep_alive)
        async with lease_cm as lease:
            # The service measured it (on another node, in a fleet): not again here.
            waited = lease.queue_seconds + lease.load_seconds
            timing = _server_timing(waited, lease.load_seconds)
            self._ready_at = time.perf_counter()
            if self._state is not None:
                self._state["served_model"] = lease.model  # the access log's model label
            if self._metrics is not None and not lease.path_prefix:  # a hop: counted there
                self._metrics.observe_wait(lease.model, waited)
            if pinger is not None:
                await pinger.stop()
                self._head_sent = self._head_sent or pinger.sent
            if self._head_sent:
                await send({"type": "http.response.body", "more_body": True,
                            "body": b": server-timing " + timing + b"\n\n"})
            else:
                self._timing = [(b"server-timing", timing)]
            if self._translation is not None:
                self._translation.begin(lease, waited)
            data, prompt_bytes = self._prompt
            defaults = lease.defaults  # empty on a hop: the serving node's lease has them
            if defaults and apply_defaults(self._path, data, defaults):
                self._body = orjson.dumps(data)
            if "lora" in data and not lease.path_prefix:
                check_lora(lease.model, data, defaults.adapters)
            check_fits(lease.context, data, prompt_bytes)
            if lease.prompt_cache:  # a fresh runner with caches saved: rare, so not cheap
                slot = await self._service.restore_prompt(lease, self._path, self._body)
                if slot is not None:
                    self._body = _with_slot(self._body, slot)
            await self._forward(lease, send)

    async def _forward(self, lease: Lease, send: Send) -> None:
        headers = [
            (b"Authorization", b"Bearer " + lease.api_key.encode()),
            (b"Content-Type", _JSON),
        ]
        if lease.path_prefix and self._keep_alive is not None:  # the hop's node applies it
            headers.append((KEEP_ALIVE_HEADER, repr(self._keep_alive).encode()))
        try:
            upstream = await self._pool.request(
                lease.host, lease.port, b"POST", lease.path_prefix + self._path, headers,
                self._body,
                limit=lease.connections,
            )
        except UpstreamError as exc:
            error = APIError(502, f"runner for '{lease.model}' is unavailable: {exc}")
            if lease.path_prefix:  # another node's hop, and nothing of the answer has left
                raise _HopFailed(lease, error) from exc
            raise error from exc
        except UpstreamBusyError as exc:
            raise APIError(503, str(exc), code="queue_full",
                           headers={"Retry-After": str(exc.retry_after)}) from exc
        self._head_at = time.perf_counter()
        if self._stream and upstream.status < 400 and self._metrics is not None \
                and not lease.path_prefix:
            # A stream's head comes with its first token: counted now, so that a client that
            # leaves mid-answer still counts its wait.
            self._metrics.observe_first_token(lease.model, self._head_at - self._began)
        try:
            if upstream.status >= 400 or not self._stream:
                await self._send_whole(lease, upstream, send)
            elif self._translation is not None and isinstance(self._translation,
                                                              StreamTranslation):
                await self._send_translated(lease, upstream, send, self._translation)
            else:
                await self._send_stream(lease, upstream, send)
        except asyncio.CancelledError:
            upstream.abort()  # mid-body: the connection cannot be reused, and must close now
            raise
        finally:
            upstream.release()

    def _cut_off(self) -> None:
        """The client took nothing of its stream for the write timeout, and the runner's
        connection is closed already (llama-server frees the slot). The relay may be blocked
        sending to the client for good: reset the client's connection and end the request."""
        log.warning("client took nothing of its stream for %g s: cut off, its runner slot "
                    "for %s freed", self._write_timeout, self._model)
        self._cut = True
        for watcher in self._watchers:  # the reset reads as the client leaving: said already
            watcher.cancel()
        close = client_closer(self._scope) if self._scope is not None else None
        if close is not None:
            close()
        if self._task is not None:
            self._task.cancel()

    def _chunks(self, upstream: UpstreamResponse,
                forward: Callable[[bytes], bool] | None = None
                ) -> contextlib.aclosing[AsyncGenerator[bytes, None]]:
        """The streamed body, closed however its loop is left, so that nothing of it (its
        watchdog, its ``forward``) outlives the exchange."""
        return contextlib.aclosing(upstream.chunks(
            self._idle_timeout, forward, self._write_timeout, self._cut_off))

    def _too_large(self, lease: Lease, upstream: UpstreamResponse, what: str) -> str:
        upstream.abort()  # the runner stops generating what nobody will get
        limit = format_bytes(self._max_answer or 0)
        log.warning("runner for %s sent %s larger than SWITCHBOARD_MAX_ANSWER_BYTES (%s): "
                    "cut off", lease.model, what, limit)
        return (f"runner for '{lease.model}' sent {what} larger than "
                f"SWITCHBOARD_MAX_ANSWER_BYTES ({limit})")

    async def _send_whole(self, lease: Lease, upstream: UpstreamResponse, send: Send) -> None:
        try:
            body = await upstream.read(self._max_answer)
        except UpstreamTooLargeError as exc:
            raise APIError(502, self._too_large(lease, upstream, "an answer"),
                           code="answer_too_large") from exc
        except UpstreamError as exc:
            raise APIError(502, f"runner for '{lease.model}' failed mid-response: {exc}") from exc
        # The runner is done: its connection goes back now, not once a client that may read
        # slowly, or never, has taken the answer.
        upstream.release()
        content_type = upstream.header(b"content-type") or _JSON
        if upstream.status >= 400 and self._head_sent:
            message = runner_error(body, upstream.status).message
            await send({"type": "http.response.body", "more_body": False,
                        "body": stream_error_event(self._dialect, message)})
            return
        timing = self._timing
        if upstream.status >= 400:
            body = normalise_error(body, upstream.status, self._dialect)
            content_type = _JSON
            retry = upstream.header(b"retry-after")  # another node's 503 says when to retry
            if retry is not None:
                timing = [*timing, (b"retry-after", retry)]
        else:
            self._observe(lease, body, streamed=False)
            if self._translation is not None:
                try:
                    body = self._translation.whole(body)
                except _UNTRANSLATABLE as exc:
                    raise APIError(502, f"runner for '{lease.model}' sent an answer that cannot "
                                   f"be translated: {exc!r}") from exc
            else:
                rewrite = _model_rewriter(lease)
                if rewrite is not None:
                    body = body.replace(*rewrite)
        await send({
            "type": "http.response.start",
            "status": upstream.status,
            "headers": [(b"content-type", content_type),
                        (b"content-length", str(len(body)).encode()), *timing],
        })
        await self._send_last(send, body)

    async def _send_last(self, send: Send, body: bytes) -> None:
        """The answer's last body message, within the write timeout: the runner is released
        by now, but a client that never reads would keep its task, its connection and up to
        max_answer_bytes here for good (Hypercorn has no write timeout). A small answer
        cannot block on its own, so only a large one, or a stream's end (what it queued
        before may not have drained), pays for the timer."""
        message = {"type": "http.response.body", "body": body, "more_body": False}
        if self._write_timeout is None or (not self._stream and len(body) < _SMALL_ANSWER):
            with contextlib.suppress(OSError):
                await send(message)
            return
        try:
            async with asyncio.timeout(self._write_timeout):
                await send(message)
        except TimeoutError:
            log.warning("client took nothing of its answer for %g s: cut off (%s)",
                        self._write_timeout, self._model)
            close = client_closer(self._scope) if self._scope is not None else None
            if close is not None:
                close()
        except OSError:
            pass

    async def _start_stream(self, send: Send, status: int, content_type: bytes) -> None:
        if self._head_sent:  # by the load pinger, as 200 text/event-stream
            return
        await send({
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type), *_SSE_HEAD[1:], *self._timing],
        })

    def _observe(self, lease: Lease, stats: bytes, streamed: bool) -> None:
        """A successful answer's usage (``stats``: its body, or its last event with counts),
        time to first token and generation speed: for /metrics where the runner is, and for
        the access log's request event (the console's recent requests) everywhere."""
        if self._metrics is None:
            return
        usage = parse_usage(stats) if stats else None
        end = time.perf_counter()
        first: float | None = None
        rate = usage.rate if usage is not None else None
        completion = usage.completion if usage is not None else None
        if streamed:  # its first token was counted as its head came
            if rate is None and completion and end > self._head_at:
                rate = completion / (end - self._head_at)
        elif usage is not None and usage.generating is not None:
            first = max(end - self._began - usage.generating, 0.0)
            if rate is None and completion and usage.generating > 0:
                rate = completion / usage.generating
        elif rate is None and completion and end > self._ready_at:
            # llama-server times only its OpenAI answers: an Anthropic or Responses answer
            # gets a rate over its whole exchange, prompt included.
            rate = completion / (end - self._ready_at)
        if not lease.path_prefix:  # a hop's tokens are counted on the node that ran them
            self._metrics.observe_answer(lease.model, usage, first, rate)
        if usage is not None and self._state is not None:
            self._state["usage"] = (usage.prompt, completion, rate)

    async def _send_stream(self, lease: Lease, upstream: UpstreamResponse, send: Send) -> None:
        await self._start_stream(send, upstream.status, upstream.header(b"content-type") or _SSE)
        rewrite = _model_rewriter(lease)
        stats = b""  # the last event with token counts: counted once, when the stream ends
        framer = _Events(self._max_answer)
        limit = framer.limit
        forward = None
        direct = queued = 0  # chunks written each way, for /metrics once the stream ends
        write = chunked_writer(self._scope) if rewrite is None and self._scope else None
        if write is not None:
            def forward(chunk: bytes) -> bool:
                # Straight to the client (gateway.direct_write) unless it needs more than counting:
                # an error event, or anything but whole events within the limit (what
                # llama-server sends), which the framer below must see. Three cheap tests.
                nonlocal stats, direct
                if framer.open or len(chunk) > limit or not chunk.endswith(b"\n\n") \
                        or _has_error_event(chunk):
                    return False
                if b'"timings"' in chunk or b'"usage"' in chunk:
                    stats = chunk
                written = write(chunk)
                direct += written
                return written
        try:
            async with self._chunks(upstream, forward) as chunks:
                async for chunk in chunks:
                    # Whole events only: a model rewrite must not miss one split across
                    # reads, nor an error event land inside one.
                    chunk = framer.whole(chunk)
                    if not chunk:
                        continue
                    if b'"timings"' in chunk or b'"usage"' in chunk:
                        stats = chunk
                    if rewrite is not None:
                        chunk = chunk.replace(*rewrite)
                    if _has_error_event(chunk):
                        chunk = self._normalise_events(chunk)
                    queued += 1
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            tail = framer.rest()
        except _EventTooLargeError:
            tail = stream_error_event(self._dialect, self._too_large(lease, upstream, "an event"))
        except UpstreamError as exc:
            log.warning("stream from runner for %s broke: %s", lease.model, exc)
            tail = stream_error_event(self._dialect,
                                      f"runner for '{lease.model}' failed mid-stream: {exc}")
        finally:
            # Also when the client left at its [DONE], before the runner's stream ended (the
            # OpenAI SDK closes then): what was generated was generated.
            self._observe(lease, stats[stats.rfind(b"data: {"):], streamed=True)
        upstream.release()  # the runner is done (or gone) before the client has the end
        if self._metrics is not None:
            self._metrics.observe_writes(direct, queued)
        await self._send_last(send, tail)

    async def _send_translated(self, lease: Lease, upstream: UpstreamResponse, send: Send,
                               translation: StreamTranslation) -> None:
        await self._start_stream(send, upstream.status, translation.media_type)
        framer = _Events(self._max_answer)
        stats = b""
        try:
            async with self._chunks(upstream) as chunks:
                async for chunk in chunks:
                    events = framer.whole(chunk)
                    if not events:
                        continue
                    out = []
                    for event in events.split(b"\n\n"):
                        data = _sse_data(event)
                        if data is None or data == b"[DONE]":
                            continue
                        if b'"timings"' in data or b'"usage"' in data:
                            stats = data
                        out.append(translation.event(data))
                    body = b"".join(out)
                    if body:
                        await send({"type": "http.response.body", "body": body,
                                    "more_body": True})
            tail = translation.end()
        except _EventTooLargeError:
            tail = translation.failed(self._too_large(lease, upstream, "an event"))
        except UpstreamError as exc:
            log.warning("stream from runner for %s broke: %s", lease.model, exc)
            tail = translation.failed(f"runner for '{lease.model}' failed mid-stream: {exc}")
        except _UNTRANSLATABLE as exc:
            log.warning("stream from runner for %s cannot be translated: %r", lease.model, exc)
            tail = translation.failed(f"runner for '{lease.model}' sent an event that cannot "
                                      f"be translated: {exc!r}")
        finally:
            self._observe(lease, stats, streamed=True)  # a client gone at the end, too
        upstream.release()  # the runner is done (or gone) before the client has the end
        await self._send_last(send, tail)

    @staticmethod
    def _normalise_events(chunk: bytes) -> bytes:
        """Error events in OpenAI's shape; older llama-servers sent 'error: {...}' lines,
        which SSE clients drop as an unknown field, hiding the failure."""
        events = chunk.split(b"\n\n")
        for i, event in enumerate(events):
            if event.startswith(_ERROR_EVENTS):
                payload = event.split(b":", 1)[1].strip()
                events[i] = b"data: " + normalise_error(payload, 500)
        return b"\n\n".join(events)
