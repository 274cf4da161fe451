"""The ASGI application: ``create_app(settings)`` and nothing else."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import RedirectResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from gateway import (
    admin,
    anthropic,
    chat,
    completions,
    direct_write,
    embeddings,
    events,
    health,
    llama,
    model_list,
    node_relay,
    nodes,
    ollama,
    openai_responses,
    openapi,
    pull,
    rerank,
)
from gateway.access_log import AccessLog
from gateway.allowlist import Allowlist
from gateway.auth import APIKeyAuth
from gateway.body_limit import BodyLimit
from gateway.drain import Drain, DrainState
from gateway.errors import EXCEPTION_HANDLERS
from gateway.images import ImageCheck
from gateway.metrics import Metrics
from gateway.metrics import routes as metrics_routes
from gateway.preload import preloading
from gateway.relay_dispatch import RelayDispatch
from gateway.upstream import UpstreamPool
from runner.service import ModelService, open_service
from runner.settings import Settings

log = logging.getLogger(__name__)


def _writable(home: Path) -> bool:
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(home, os.W_OK)  # EROFS counts: a read-only mount fails even root


def _banner(settings: Settings, service: ModelService, config_note: str | None) -> None:
    """What an operator needs at start: where, which config, which runner and why, GPUs,
    models, auth."""
    where = f"http://{settings.host}:{settings.port}/v1"
    log.info("switchboard %s listening on %s", version("switchboard"), where)
    if config_note is not None:
        log.info("config: %s", config_note)
    lines = service.report()
    for level, line in lines[:1]:  # the runner first, then how the relay writes
        log.log(level, "%s", line)
    log.log(logging.INFO if direct_write.UNAVAILABLE is None else logging.WARNING, "%s",
            direct_write.describe())
    for level, line in lines[1:]:
        log.log(level, "%s", line)
    if not _writable(settings.home):
        log.error("SWITCHBOARD_HOME %s is not writable: pulls, packaged models and backend "
                  "installs will fail; models already on disk still serve", settings.home)
    keys = len(settings.api_keys)
    log.info("auth: %s", f"on ({keys} key{'s' if keys != 1 else ''})" if keys
             else "off (no SWITCHBOARD_API_KEYS)")


UI = Path(__file__).parent / "ui"


# What may sit between the server and the relay: the relay writes stream chunks straight to
# the client's transport (gateway.direct_write), past every middleware, so one that changes bodies
# (compression, rewriting) would see a stream's head and end but not its middle.
_BODY_PRESERVING: frozenset[type] = frozenset({AccessLog, Drain, CORSMiddleware, APIKeyAuth,
                                               BodyLimit, RelayDispatch})


def _check_middleware(extra: Sequence[Middleware]) -> None:
    for entry in extra:
        cls: Any = entry.cls
        if cls not in _BODY_PRESERVING and not getattr(cls, "preserves_bodies", False):
            raise ValueError(
                f"{cls.__name__} would sit inside the relay's direct writes "
                "(gateway.direct_write), which bypass it: a middleware that changes response "
                "bodies must wrap the server instead; one that does not can say so with "
                "preserves_bodies = True")


def create_app(settings: Settings, middleware: Sequence[Middleware] = (),
               service: ModelService | None = None,
               config_note: str | None = None) -> Starlette:
    """The gateway over ``service`` (by default this machine's runners, extracted at startup
    and all stopped and removed at shutdown). ``middleware`` goes inside the gateway's own,
    before routing; it must leave bodies as they are (see ``_check_middleware``).
    ``config_note`` says in the start banner which config file the settings came from."""
    _check_middleware(middleware)
    metrics = Metrics()
    models_service: ModelService = service or open_service(settings)
    bus = models_service.events

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        upstream = UpstreamPool(max_waiters=settings.max_queue)

        def loaded(model: str, mode: str, seconds: float) -> None:
            metrics.load_seconds.labels(model, mode).observe(seconds)

        # Else the pool keeps a host for every runner ever started.
        models_service.observe(on_load=loaded, on_stop=upstream.close_host)
        await models_service.start()
        sampler = events.MemorySampler(models_service, settings.events_sample)
        metrics.service = models_service
        app.state.settings = settings
        app.state.allowlist = Allowlist(settings)
        app.state.image_check = ImageCheck(settings)
        app.state.metrics = metrics
        app.state.service = models_service
        app.state.upstream = upstream
        app.state.sampler = sampler
        _banner(settings, models_service, config_note)
        try:
            async with preloading(models_service, settings.preload):
                yield
        finally:
            await sampler.aclose()
            await models_service.close()
            upstream.close()

    drain = DrainState()
    relayed = [*chat.routes, *completions.routes, *embeddings.routes, *openai_responses.routes,
               *anthropic.routes, *rerank.routes, *llama.routes, *ollama.relayed]
    app = Starlette(
        routes=[
            *relayed, *model_list.routes, *ollama.local_models.routes, *ollama.create.routes,
            *ollama.blobs.routes,
            *admin.routes, *pull.routes,
            *events.routes, *nodes.routes, *node_relay.routes, *health.routes, *metrics_routes,
            *openapi.routes,
            # The console's page is open (it asks for a key); what it calls is not.
            Route("/ui", lambda request: RedirectResponse("/ui/"), methods=["GET"]),
            Mount("/ui", StaticFiles(directory=UI, html=True), name="ui"),
        ],
        middleware=[
            Middleware(AccessLog, metrics=metrics, events=bus),
            Middleware(Drain, state=drain),
            # Before auth: a browser's preflight carries no credentials. Left out when no
            # origin is allowed: it would only cost every request a pass through it.
            *([Middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                          allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
                          allow_headers=["authorization", "content-type", "x-request-id",
                                         "x-api-key", "anthropic-version"],
                          expose_headers=["x-request-id"])] if settings.cors_origins else []),
            Middleware(APIKeyAuth, keys=settings.api_keys,
                       metrics_public=settings.metrics_public),
            Middleware(BodyLimit, limit=settings.max_body_bytes, timeout=settings.body_timeout),
            *middleware,
            Middleware(RelayDispatch, routes=relayed, prefixed=node_relay.routes),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    drain.on_start.append(bus.close)
    app.state.drain = drain  # the CLI starts draining on SIGTERM
    return app
