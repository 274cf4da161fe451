"""The ASGI application: ``create_app(settings)`` and nothing else."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

from gateway import admin, chat, completions, embeddings, health, models, openapi, pull
from gateway.access_log import AccessLog
from gateway.auth import APIKeyAuth
from gateway.body_limit import BodyLimit
from gateway.errors import EXCEPTION_HANDLERS
from gateway.metrics import Metrics
from gateway.metrics import routes as metrics_routes
from gateway.upstream import UpstreamPool
from runner.memory import gpu_library
from runner.payloads import extract, find_system_binary
from runner.pull import Puller
from runner.scheduler import Scheduler
from runner.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> Starlette:
    """The gateway; runners are extracted at startup and all stopped and removed at shutdown."""
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        system_binary = find_system_binary(settings.llama_server)
        payloads = extract(settings.tmpdir, settings.home, system_binary)
        gpu = gpu_library()

        def loaded(model: str, seconds: float) -> None:
            metrics.load_seconds.labels(model).observe(seconds)

        scheduler = Scheduler(settings, payloads, gpu=gpu, on_load=loaded)
        metrics.scheduler = scheduler
        upstream = UpstreamPool()
        puller = Puller(settings, scheduler.catalog.store)
        app.state.settings = settings
        app.state.puller = puller
        app.state.metrics = metrics
        app.state.scheduler = scheduler
        app.state.upstream = upstream
        log.info("runner variants for this machine, best first: %s (GPU library: %s)",
                 ", ".join(scheduler.variants()) or "none", gpu.requested if gpu else "none")
        try:
            yield
        finally:
            await scheduler.close()
            await puller.aclose()
            upstream.close()
            payloads.cleanup()

    return Starlette(
        routes=[
            *chat.routes, *completions.routes, *embeddings.routes, *models.routes,
            *admin.routes, *pull.routes, *health.routes, *metrics_routes, *openapi.routes,
        ],
        middleware=[
            Middleware(AccessLog, metrics=metrics),
            # Before auth: a browser's preflight carries no credentials.
            Middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                       allow_methods=["GET", "POST", "OPTIONS"],
                       allow_headers=["authorization", "content-type", "x-request-id"],
                       expose_headers=["x-request-id"]),
            Middleware(APIKeyAuth, keys=settings.api_keys),
            Middleware(BodyLimit, limit=settings.max_body_bytes),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
