"""GET /api/nodes: the fleet as this node sees it, each node with its models, loaded runners
(busy and total slots) and free memory. A node serving alone lists itself."""

from __future__ import annotations

from dataclasses import asdict
from importlib.metadata import version

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.json_response import JSONBytes
from runner.service import ModelService


async def nodes(request: Request) -> Response:
    service: ModelService = request.app.state.service
    ours = version("switchboard")
    listed = []
    for record in service.nodes():
        entry = asdict(record)
        # A node of another version is listed, and says so: mixed versions may disagree on
        # what they send each other.
        entry["state"] = "up" if record.version == ours else "version-mismatch"
        listed.append({key: entry[key] for key in ("name", "url", "state", "version", "models",
                                                   "runners", "queue_depth", "memory")})
    return JSONBytes({"nodes": listed})


routes = [Route("/api/nodes", nodes, methods=["GET"])]
