"""GET /api/nodes: the fleet as this node sees it, each node with its models, loaded runners
(busy and total slots) and free memory. A node serving alone lists itself."""

from __future__ import annotations

from importlib.metadata import version

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.json_response import JSONBytes
from runner.service import ModelService, RunnerInfo


def _runner(info: RunnerInfo) -> dict[str, object]:
    """A runner as the fleet routes by it: its slots, and how many are busy; ``/api/ps``
    has the rest."""
    return {"runner": info.runner, "model": info.model, "mode": info.mode,
            "busy": info.in_flight, "slots": info.parallel, "draining": info.draining}


async def nodes(request: Request) -> Response:
    service: ModelService = request.app.state.service
    ours = version("switchboard")
    listed = []
    for record in service.nodes():
        listed.append({
            "name": record.name, "url": record.url,
            # A node of another version is listed, and says so: mixed versions may disagree
            # on what they send each other.
            "state": "up" if record.version == ours else "version-mismatch",
            "version": record.version, "models": list(record.models),
            "runners": [_runner(info) for info in record.runners],
            "queue_depth": record.queue_depth, "memory": record.memory,
        })
    return JSONBytes({"nodes": listed})


routes = [Route("/api/nodes", nodes, methods=["GET"])]
