"""In-process fakes for gateway tests: a :class:`FakeModelService` behind the gateway's one door
(:class:`runner.service.ModelService`) and a :class:`FakeUpstream`, a tiny llama-server on
127.0.0.1 that records what it was sent and answers what the test tells it to.

The relay's upstream pool opens real TCP connections to ``lease.host:lease.port``, so the fake
upstream listens on a real loopback port, served by the test's own event loop: no child
process, nothing to reap. :func:`gateway_client` runs the app's lifespan around an httpx
client over ``httpx.ASGITransport`` (which does not run lifespans itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from gateway.app import create_app
from runner.service import (
    ContextWindow,
    CreateProgress,
    CreateRequest,
    EventBus,
    Lease,
    LoadObserver,
    MemorySample,
    ModelFacts,
    ModelNotFoundError,
    ModelService,
    NodeRecord,
    PullEvent,
    PullJob,
    RequestDefaults,
    RunnerInfo,
    RunnerOptions,
    ServiceError,
    StartingRunner,
)
from runner.service import Emit as PullEmit
from runner.settings import ModelConfig, Settings

IO_TIMEOUT = 5.0  # seconds any read or wait of the fakes may take before the test fails

# -- the fake upstream (llama-server) --------------------------------------------------------


@dataclass(frozen=True)
class UpstreamRequest:
    """One request as the fake llama-server received it."""

    method: str
    path: str
    headers: dict[str, str]  # names lowercased
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass(frozen=True)
class Reply:
    """What the fake llama-server answers. ``parts`` are written one at a time: with
    ``chunked`` each is one chunk of a chunked body, else they are joined under a
    Content-Length."""

    status: int = 200
    content_type: str = "application/json"
    parts: tuple[bytes, ...] = ()
    chunked: bool = False


Responder = Callable[[UpstreamRequest], Reply]


def json_reply(obj: object, status: int = 200) -> Reply:
    return Reply(status, "application/json", (orjson.dumps(obj),))


def sse(*events: object) -> tuple[bytes, ...]:
    """SSE events, one per part: a dict or list is JSON data, bytes are sent as they are."""
    return tuple(event if isinstance(event, bytes) else b"data: " + orjson.dumps(event) + b"\n\n"
                 for event in events)


def sse_reply(*events: object) -> Reply:
    return Reply(200, "text/event-stream", sse(*events), chunked=True)


USAGE = {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}
TIMINGS = {"prompt_n": 7, "prompt_ms": 1.5, "predicted_n": 2, "predicted_ms": 3.25,
           "predicted_per_second": 615.4}


def chat_completion(model: str, content: str = "fake reply") -> dict[str, Any]:
    return {"id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}],
            "usage": USAGE, "timings": TIMINGS}


def chat_chunk(model: str, content: str | None = None, finish: str | None = None,
               **extra: Any) -> dict[str, Any]:
    delta = {"content": content} if content is not None else {}
    return {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0,
            "model": model, "choices": [{"index": 0, "finish_reason": finish, "delta": delta}],
            **extra}


def chat_stream(model: str, pieces: Iterable[str] = ("fake ", "reply")) -> Reply:
    """A streamed chat completion as llama-server sends it: a chunk per piece, a finishing
    chunk with usage and timings, then ``[DONE]``."""
    return sse_reply(*(chat_chunk(model, piece) for piece in pieces),
                     {**chat_chunk(model, finish="stop"), "usage": USAGE, "timings": TIMINGS},
                     b"data: [DONE]\n\n")


def text_completion(model: str, text: str = "fake text") -> dict[str, Any]:
    return {"id": "cmpl-fake", "object": "text_completion", "created": 0, "model": model,
            "choices": [{"index": 0, "finish_reason": "stop", "text": text}], "usage": USAGE}


def anthropic_message(model: str, text: str = "fake reply") -> dict[str, Any]:
    return {"id": "msg_fake", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
            "usage": {"input_tokens": 7, "output_tokens": 2}}


def anthropic_stream(model: str) -> Reply:
    def event(kind: str, data: dict[str, Any]) -> bytes:
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    return Reply(200, "text/event-stream", (
        event("message_start", {"type": "message_start", "message": {
            "id": "msg_fake", "type": "message", "role": "assistant", "model": model,
            "content": [], "usage": {"input_tokens": 7, "output_tokens": 0}}}),
        event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                      "delta": {"type": "text_delta", "text": "fake"}}),
        event("message_delta", {"type": "message_delta", "delta": {
            "stop_reason": "end_turn", "stop_sequence": None}, "usage": {"output_tokens": 2}}),
        event("message_stop", {"type": "message_stop"}),
    ), chunked=True)


class FakeUpstream:
    """A llama-server stand-in on 127.0.0.1: HTTP/1.1 with keep-alive, Content-Length request
    bodies, answers from :attr:`responder` (by default :meth:`canned`). ``model`` is the name
    it reports in its answers, as llama-server reports its ``--alias``."""

    host = "127.0.0.1"

    def __init__(self, model: str = "tiny", responder: Responder | None = None) -> None:
        self.model = model
        self.responder: Responder = responder or self.canned
        self.requests: list[UpstreamRequest] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[Any]] = set()

    @property
    def paths(self) -> list[str]:
        return [request.path for request in self.requests]

    @property
    def last(self) -> UpstreamRequest:
        assert self.requests, "the upstream received no request"
        return self.requests[-1]

    def canned(self, request: UpstreamRequest) -> Reply:
        """llama-server's usual answer for the path (streamed when the body asks)."""
        body = request.json()
        stream = isinstance(body, dict) and body.get("stream") is True
        match request.path:
            case "/v1/chat/completions":
                return chat_stream(self.model) if stream else json_reply(
                    chat_completion(self.model))
            case "/v1/completions":
                return json_reply(text_completion(self.model))
            case "/v1/messages":
                return anthropic_stream(self.model) if stream else json_reply(
                    anthropic_message(self.model))
            case "/v1/messages/count_tokens":
                return json_reply({"input_tokens": 7})
            case "/v1/embeddings":
                return json_reply({"object": "list", "model": self.model, "data": [
                    {"object": "embedding", "index": 0, "embedding": [0.5, -0.5]}],
                    "usage": {"prompt_tokens": 2, "total_tokens": 2}})
            case "/v1/rerank":
                return json_reply({"model": self.model, "results": [
                    {"index": 0, "relevance_score": 0.25}]})
            case "/v1/responses":
                return json_reply({"id": "resp_fake", "object": "response", "model": self.model,
                                   "status": "completed", "output": []})
            case "/tokenize":
                return json_reply({"tokens": [1, 2, 3]})
            case "/detokenize":
                return json_reply({"content": "abc"})
            case "/apply-template":
                return json_reply({"prompt": "<user>hi</user>"})
        return json_reply({"error": {"code": 404, "message": "File Not Found",
                                     "type": "not_found_error"}}, 404)

    async def __aenter__(self) -> FakeUpstream:
        self._server = await asyncio.start_server(self._serve, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        if self._handlers:
            _, pending = await asyncio.wait(self._handlers, timeout=IO_TIMEOUT)
            for task in pending:
                task.cancel()
        if self._server is not None:
            async with asyncio.timeout(IO_TIMEOUT):
                await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(writer)
        try:
            while await self._exchange(reader, writer):
                pass
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass  # the gateway closed or dropped the connection
        finally:
            self._writers.discard(writer)
            self._handlers.discard(task)
            writer.close()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """One request and its answer; False once the connection is done."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")  # an idle keep-alive waits here
        except asyncio.IncompleteReadError:
            return False
        line, *lines = head.decode("latin-1").split("\r\n")
        method, path, _ = line.split(" ", 2)
        headers = {}
        for header in lines:
            if header:
                name, _, value = header.partition(":")
                headers[name.strip().lower()] = value.strip()
        async with asyncio.timeout(IO_TIMEOUT):
            body = await reader.readexactly(int(headers.get("content-length", "0")))
        request = UpstreamRequest(method, path, headers, body)
        self.requests.append(request)
        reply = self.responder(request)
        framing = (b"Transfer-Encoding: chunked" if reply.chunked
                   else b"Content-Length: %d" % sum(len(part) for part in reply.parts))
        writer.write(b"HTTP/1.1 %d Fake\r\nContent-Type: %s\r\n%s\r\n\r\n"
                     % (reply.status, reply.content_type.encode(), framing))
        async with asyncio.timeout(IO_TIMEOUT):
            if reply.chunked:
                for part in reply.parts:  # each its own write, as a runner's tokens come
                    writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
            else:
                writer.write(b"".join(reply.parts))
            await writer.drain()
        return True


# -- the fake runner side ------------------------------------------------------------------------


@dataclass(frozen=True)
class Acquired:
    """One ``acquire`` call, as the gateway made it."""

    model: str
    options: RunnerOptions | None
    keep_alive: float | None


@dataclass
class FakeModelService:
    """A :class:`ModelService` with no runners behind it: every lease points at
    ``upstream`` (host, port), and every call is recorded. ``models`` maps each canonical
    name to its aliases. ``refusals`` maps an operation (``acquire``, ``unload``, ``delete``,
    ``facts``, ``pull``) to the :class:`ServiceError` it raises instead of doing it."""

    upstream: tuple[str, int] = ("127.0.0.1", 9)
    models: dict[str, tuple[str, ...]] = field(
        default_factory=lambda: {"tiny": ("tiny-alias",)})
    api_key: str = "runner-key"
    connections: int = 4
    context: ContextWindow = field(default_factory=ContextWindow)
    node_name: str = "fake-node"
    refusals: dict[str, ServiceError] = field(default_factory=dict)
    runners: list[RunnerInfo] = field(default_factory=list)
    loading: list[StartingRunner] = field(default_factory=list)
    loaded_models: set[str] = field(default_factory=set)  # what unload() finds loaded
    fleet: list[NodeRecord] = field(default_factory=list)  # what nodes() answers
    hops: list[tuple[str, int, bytes]] = field(default_factory=list)  # leases on other nodes
    defaults: dict[str, RequestDefaults] = field(default_factory=dict)  # by canonical name
    created: list[CreateRequest] = field(default_factory=list)
    templates: dict[str, str] = field(default_factory=dict)  # by canonical name, for facts
    vision: set[str] = field(default_factory=set)  # canonical names that have a projector
    copied: list[tuple[str, str]] = field(default_factory=list)
    blobs: dict[str, bytes] = field(default_factory=dict)  # what receive_blob took

    acquired: list[Acquired] = field(default_factory=list, init=False)
    in_flight: int = field(default=0, init=False)
    released: int = field(default=0, init=False)
    unloaded: list[str] = field(default_factory=list, init=False)
    deleted: list[str] = field(default_factory=list, init=False)
    failed_hops: list[Lease] = field(default_factory=list, init=False)
    pulled: list[str | None] = field(default_factory=list, init=False)
    started: bool = field(default=False, init=False)
    closed: bool = field(default=False, init=False)
    load_observers: list[LoadObserver] = field(default_factory=list, init=False)
    stop_observers: list[Callable[[str, int], None]] = field(default_factory=list, init=False)
    _events: EventBus = field(default_factory=EventBus, init=False)

    def _refuse(self, operation: str) -> None:
        refusal = self.refusals.get(operation)
        if refusal is not None:
            raise refusal

    @property
    def node(self) -> str:
        return self.node_name

    @property
    def events(self) -> EventBus:
        return self._events

    async def start(self) -> None:
        assert not self.started, "start() called twice"
        self.started = True

    async def close(self) -> None:
        self.closed = True

    def report(self) -> list[tuple[int, str]]:
        return [(logging.INFO, "runner: fake"), (logging.INFO, f"models: {self.names()}")]

    def observe(self, on_load: LoadObserver | None = None,
                on_stop: Callable[[str, int], None] | None = None) -> None:
        if on_load is not None:
            self.load_observers.append(on_load)
        if on_stop is not None:
            self.stop_observers.append(on_stop)

    # -- names and facts -----------------------------------------------------------------

    def names(self) -> list[str]:
        return list(self.models)

    def canonical(self, name: str) -> str | None:
        for canonical, aliases in self.models.items():
            if name == canonical or name in aliases:
                return canonical
        return None

    async def create(self, request: CreateRequest, emit: CreateProgress) -> None:
        refusal = self.refusals.get("create")
        if refusal is not None:
            raise refusal
        self.created.append(request)
        emit({"status": "success"})

    def copy(self, source: str, destination: str) -> None:
        refusal = self.refusals.get("copy")
        if refusal is not None:
            raise refusal
        self.copied.append((source, destination))

    def has_blob(self, digest: str) -> bool:
        return digest in self.blobs

    async def receive_blob(self, digest: str, chunks: AsyncIterator[bytes]) -> None:
        self.blobs[digest] = b"".join([chunk async for chunk in chunks])

    def _facts(self, name: str) -> ModelFacts:
        projector = f"/models/{name}-mmproj.gguf" if name in self.vision else None
        return ModelFacts(name=name, config=ModelConfig(source=f"/models/{name}.gguf",
                                                        projector=projector),
                          path=None, size=1234, modified=1_700_000_000.0, digest="ab" * 32,
                          architecture="llama", parameters=1_000_000, quantization="Q4_K_M",
                          template=self.templates.get(name))

    async def facts(self, name: str) -> ModelFacts:
        self._refuse("facts")
        canonical = self.canonical(name)
        if canonical is None:
            raise ModelNotFoundError(name)
        return self._facts(canonical)

    async def all_facts(self) -> list[ModelFacts]:
        return [self._facts(name) for name in self.models]

    # -- runners --------------------------------------------------------------------------

    def acquire(self, model: str, options: RunnerOptions | None = None,
                keep_alive: float | None = None) -> AbstractAsyncContextManager[Lease]:
        self.acquired.append(Acquired(model, options, keep_alive))
        return self._lease(model)

    @contextlib.asynccontextmanager
    async def _lease(self, model: str) -> AsyncIterator[Lease]:
        self._refuse("acquire")
        canonical = self.canonical(model)
        if canonical is None:
            raise ModelNotFoundError(model)
        host, port = self.upstream
        node, prefix = self.node_name, b""
        if self.hops:  # the next lease is on another node, at this address and prefix
            host, port, prefix = self.hops.pop(0)
            node = "other-node"
        self.in_flight += 1
        try:
            yield Lease(model=canonical, requested=model, host=host, port=port,
                        api_key=self.api_key, connections=self.connections,
                        context=self.context, node=node, path_prefix=prefix,
                        # as a real hop's: the serving node applies them, not this one
                        defaults=RequestDefaults() if prefix else self.defaults.get(
                            canonical, RequestDefaults()))
        finally:
            self.in_flight -= 1
            self.released += 1

    async def restore_prompt(self, lease: Lease, path: bytes, body: bytes) -> int | None:
        return None  # a fake runner saves no slots

    def loaded(self) -> list[RunnerInfo]:
        return list(self.runners)

    def starting(self) -> list[StartingRunner]:
        return list(self.loading)

    @property
    def queue_depth(self) -> int:
        return 0

    def runner_output(self, runner: str) -> list[str]:
        return []

    async def unload(self, model: str) -> bool:
        self._refuse("unload")
        self.unloaded.append(model)
        return model in self.loaded_models

    def memory(self) -> MemorySample:
        return MemorySample(ram_total=16 << 30, ram_available=8 << 30)

    def nodes(self) -> list[NodeRecord]:
        return list(self.fleet)

    def fleet_runners(self) -> list[RunnerInfo]:
        return self.loaded() + [r for record in self.fleet[1:] for r in record.runners]

    def hop_failed(self, lease: Lease) -> None:
        self.failed_hops.append(lease)

    # -- the store ------------------------------------------------------------------------

    def pull(self, model: str | None = None, url: str | None = None,
             sha256: str | None = None, insecure: bool = False) -> PullJob:
        self._refuse("pull")

        async def job(emit: PullEmit) -> object:
            self.pulled.append(model)
            emit(PullEvent("success"))
            return None

        return job

    async def delete(self, model: str) -> None:
        self._refuse("delete")
        if self.canonical(model) is None:
            raise ModelNotFoundError(model)
        self.deleted.append(model)


def as_model_service(service: FakeModelService) -> ModelService:
    """The fake where a :class:`ModelService` is expected (mypy checks it conforms)."""
    return service


@contextlib.asynccontextmanager
async def gateway_client(settings: Settings,
                         service: FakeModelService) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway over ``service``, its lifespan running, and a client speaking to it in
    process."""
    app = create_app(settings, service=as_model_service(service))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway",
                                     timeout=IO_TIMEOUT) as client:
            yield client
