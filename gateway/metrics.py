"""GET /metrics: Prometheus text format, on a registry of this app's own (not the global one).

Request counts and latency are recorded by the access-log middleware, tokens by the relay
(from the usage a runner reports), load times by the model service's load hook; queue depth,
loaded runners and in-flight requests are read from the service when scraped.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from runner.service import ModelService

Usage = tuple[int | None, int | None, float | None]  # prompt, completion, tokens/s
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_LOAD_BUCKETS = (0.25, 0.5, 1, 2, 5, 10, 20, 40, 80, 160, 320)


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
                                 "time to the end of the response", ["route"],
                                 buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.prompt_tokens = Counter("switchboard_prompt_tokens", "prompt tokens processed",
                                     ["model"], registry=self.registry)
        self.completion_tokens = Counter("switchboard_completion_tokens",
                                         "tokens generated", ["model"], registry=self.registry)
        self.load_seconds = Histogram("switchboard_runner_load_seconds",
                                      "spawn to /health 200", ["model"],
                                      buckets=_LOAD_BUCKETS, registry=self.registry)
        # Stream chunks written straight to the client's transport (gateway.direct_write) or
        # through ASGI: a direct path silently lost to a Hypercorn or h11 upgrade shows here.
        self.relay_writes = Counter("switchboard_relay_writes", "streamed chunks relayed, by "
                                    "path: direct (to the transport) or asgi", ["path"],
                                    registry=self.registry)
        self._direct_writes = self.relay_writes.labels("direct")
        self._asgi_writes = self.relay_writes.labels("asgi")
        self.registry.register(_ServiceGauges(self))
        self._request_children: dict[tuple[str, int], tuple[Any, Any]] = {}
        self._token_children: dict[str, tuple[Any, Any]] = {}

    def observe_writes(self, direct: int, asgi: int) -> None:
        """One stream's chunks, counted once at its end rather than per chunk."""
        if direct:
            self._direct_writes.inc(direct)
        if asgi:
            self._asgi_writes.inc(asgi)

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        # labels() hashes and locks on every call; the children are few and fixed, so
        # looking each up once keeps metrics off the per-request profile.
        children = self._request_children.get((route, status))
        if children is None:
            children = (self.requests.labels(route, str(status)), self.latency.labels(route))
            self._request_children[(route, status)] = children
        children[0].inc()
        children[1].observe(seconds)

    def _tokens(self, model: str) -> tuple[Any, Any]:
        children = self._token_children.get(model)
        if children is None:
            children = (self.prompt_tokens.labels(model), self.completion_tokens.labels(model))
            self._token_children[model] = children
        return children

    def observe_usage(self, model: str, body: bytes) -> Usage | None:
        """Count tokens from a response body or SSE event carrying ``usage`` or ``timings``;
        returns (prompt, completion, generated tokens per second) as far as they are known."""
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
        prompt_counter, completion_counter = self._tokens(model)
        if isinstance(prompt, int):
            prompt_counter.inc(prompt)
        if isinstance(completion, int):
            completion_counter.inc(completion)
        rate = timings.get("predicted_per_second")
        return (prompt if isinstance(prompt, int) else None,
                completion if isinstance(completion, int) else None,
                rate if isinstance(rate, int | float) else None)


async def metrics(request: Request) -> Response:
    registry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")


routes = [Route("/metrics", metrics, methods=["GET"])]
