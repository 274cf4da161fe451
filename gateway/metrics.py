"""GET /metrics: Prometheus text format, on a registry of this app's own (not the global one).

Request counts and durations (by route and the model that served them) are recorded by the
access-log middleware; tokens, time to first token, queue wait and generation speed by the
relay, from what a runner reports, on the node whose runner served the request (a hop's first
node counts the request, not its tokens, so a fleet's sums count each once); load times by the
model service's load hook; queue depth, loaded runners and in-flight requests are read from the
service when scraped. The mode (chat, embeddings, reranking) is a label of its own wherever it
appears, never part of ``model``. No ``*_created`` series: they double the series count and no
dashboard reads them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from runner.service import ModelService

disable_created_metrics()  # type: ignore[no-untyped-call]  # process-wide in prometheus_client; this is the only registry

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_LOAD_BUCKETS = (0.25, 0.5, 1, 2, 5, 10, 20, 40, 80, 160, 320)
_RATE_BUCKETS = (1, 2.5, 5, 10, 20, 35, 50, 75, 100, 150, 250, 500, 1000, 2500)


class _ModelSeries(NamedTuple):
    """One model's children of the per-model metrics, looked up once (labels() locks)."""

    prompt_tokens: Any
    completion_tokens: Any
    first_token: Any
    queue_wait: Any
    generation_rate: Any


@dataclass(frozen=True, slots=True)
class Usage:
    """What one answer's ``usage`` or ``timings`` say, as far as they say it."""

    prompt: int | None = None
    completion: int | None = None
    rate: float | None = None  # generated tokens per second, as the runner measured them
    generating: float | None = None  # seconds spent generating, as the runner measured them
    prompt_seconds: float | None = None  # seconds spent on the prompt, as the runner measured


def parse_usage(body: bytes) -> Usage | None:
    """The token counts of a response body or SSE event carrying ``usage`` or ``timings``
    (llama-server's); None when it carries neither."""
    start = body.find(b"{")
    if start < 0:
        return None
    try:
        data = orjson.loads(body[start:].split(b"\n\n", 1)[0])
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    usage = data.get("usage")
    if not isinstance(usage, dict):  # Responses streams nest it in the response
        response = data.get("response")
        usage = response.get("usage") if isinstance(response, dict) else None
    timings = data.get("timings")
    timings = timings if isinstance(timings, dict) else {}
    if isinstance(usage, dict):
        # OpenAI's names, else the Responses and Anthropic APIs' ones.
        prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
        completion = usage.get("completion_tokens", usage.get("output_tokens"))
    elif timings:
        prompt, completion = timings.get("prompt_n"), timings.get("predicted_n")
    else:
        return None
    rate = timings.get("predicted_per_second")
    generating, prompt_ms = timings.get("predicted_ms"), timings.get("prompt_ms")
    return Usage(prompt if isinstance(prompt, int) else None,
                 completion if isinstance(completion, int) else None,
                 float(rate) if isinstance(rate, int | float) and rate > 0 else None,
                 generating / 1000 if isinstance(generating, int | float) else None,
                 prompt_ms / 1000 if isinstance(prompt_ms, int | float) else None)


class _ServiceGauges(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        service = self._metrics.service
        if service is None:
            return
        runners = service.loaded()
        yield GaugeMetricFamily("switchboard_queue_depth", "requests waiting for a runner",
                                value=service.queue_depth)
        yield GaugeMetricFamily("switchboard_event_subscribers", "open /api/events streams",
                                value=service.events.subscribers)
        # A fleet's dashboards join every node's series to its name on ``instance``.
        node = GaugeMetricFamily("switchboard_node_info", "1, labelled with this node's name",
                                 labels=["node"])
        node.add_metric([service.node], 1)
        yield node
        sample = service.memory()
        machine = GaugeMetricFamily("switchboard_memory_bytes", "this machine's memory, by "
                                    "device (ram, gpu0 …) and kind (total, available)",
                                    labels=["device", "kind"])
        machine.add_metric(["ram", "total"], sample.ram_total)
        machine.add_metric(["ram", "available"], sample.ram_available)
        for gpu in sample.gpus:
            machine.add_metric([f"gpu{gpu.index}", "total"], gpu.total)
            machine.add_metric([f"gpu{gpu.index}", "available"], gpu.free)
        yield machine
        loaded = GaugeMetricFamily("switchboard_loaded_runners", "runners loaded",
                                   labels=["model", "mode"])
        in_flight = GaugeMetricFamily("switchboard_in_flight_requests",
                                      "requests holding a runner", labels=["model", "mode"])
        memory = GaugeMetricFamily("switchboard_runner_memory_bytes",
                                   "measured runner memory (RSS + VRAM)", labels=["model", "mode"])
        for info in runners:
            labels = [info.model, info.mode]
            loaded.add_metric(labels, 1)
            in_flight.add_metric(labels, info.in_flight)
            memory.add_metric(labels, info.actual_bytes or 0)
        yield loaded
        yield in_flight
        yield memory


class Metrics:
    """The gateway's metrics; ``service`` is attached once the app has started."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.service: ModelService | None = None
        self.requests = Counter("switchboard_requests", "HTTP requests answered",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("switchboard_request_duration_seconds",
                                 "time to the end of the response, by route and the model that "
                                 "served it (empty when none did)", ["route", "model"],
                                 buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.first_token = Histogram("switchboard_time_to_first_token_seconds",
                                     "from the request to its first generated token, queueing "
                                     "and loading included", ["model"],
                                     buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.queue_wait = Histogram("switchboard_queue_wait_seconds",
                                    "from the request to holding a ready runner (queueing and "
                                    "any load it waited for)", ["model"],
                                    buckets=_WAIT_BUCKETS, registry=self.registry)
        self.generation_rate = Histogram("switchboard_generation_tokens_per_second",
                                         "tokens generated per second of generation, per "
                                         "answer", ["model"], buckets=_RATE_BUCKETS,
                                         registry=self.registry)
        self.prompt_tokens = Counter("switchboard_prompt_tokens", "prompt tokens processed",
                                     ["model"], registry=self.registry)
        self.completion_tokens = Counter("switchboard_completion_tokens",
                                         "tokens generated", ["model"], registry=self.registry)
        self.load_seconds = Histogram("switchboard_runner_load_seconds",
                                      "spawn to /health 200", ["model", "mode"],
                                      buckets=_LOAD_BUCKETS, registry=self.registry)
        # Stream chunks written straight to the client's transport (gateway.direct_write) or
        # through ASGI: a direct path silently lost to a Hypercorn or h11 upgrade shows here.
        self.relay_writes = Counter("switchboard_relay_writes", "streamed chunks relayed, by "
                                    "path: direct (to the transport) or asgi", ["path"],
                                    registry=self.registry)
        self._direct_writes = self.relay_writes.labels("direct")
        self._asgi_writes = self.relay_writes.labels("asgi")
        self.registry.register(_ServiceGauges(self))
        self._request_children: dict[tuple[str, int, str], tuple[Any, Any]] = {}
        self._model_children: dict[str, _ModelSeries] = {}

    def observe_writes(self, direct: int, asgi: int) -> None:
        """One stream's chunks, counted once at its end rather than per chunk."""
        if direct:
            self._direct_writes.inc(direct)
        if asgi:
            self._asgi_writes.inc(asgi)

    def observe_request(self, route: str, status: int, seconds: float, model: str = "") -> None:
        # labels() hashes and locks on every call; the children are few and fixed, so
        # looking each up once keeps metrics off the per-request profile.
        children = self._request_children.get((route, status, model))
        if children is None:
            children = (self.requests.labels(route, str(status)),
                        self.latency.labels(route, model))
            self._request_children[(route, status, model)] = children
        children[0].inc()
        children[1].observe(seconds)

    def _of(self, model: str) -> _ModelSeries:
        children = self._model_children.get(model)
        if children is None:
            children = _ModelSeries(
                self.prompt_tokens.labels(model), self.completion_tokens.labels(model),
                self.first_token.labels(model), self.queue_wait.labels(model),
                self.generation_rate.labels(model))
            self._model_children[model] = children
        return children

    def observe_wait(self, model: str, seconds: float) -> None:
        self._of(model).queue_wait.observe(seconds)

    def observe_first_token(self, model: str, seconds: float) -> None:
        self._of(model).first_token.observe(seconds)

    def observe_answer(self, model: str, usage: Usage | None, first_token: float | None,
                       rate: float | None) -> None:
        """One answer's tokens, its time to first token and its generation speed, each
        where known (an embedding has no first token; an answer without usage, no tokens)."""
        series = self._of(model)
        if usage is not None:
            if usage.prompt is not None:
                series.prompt_tokens.inc(usage.prompt)
            if usage.completion is not None:
                series.completion_tokens.inc(usage.completion)
        if first_token is not None:
            series.first_token.observe(first_token)
        if rate is not None:
            series.generation_rate.observe(rate)


async def metrics(request: Request) -> Response:
    registry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")


routes = [Route("/metrics", metrics, methods=["GET"])]
