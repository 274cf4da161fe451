"""GET /api/nodes lists the fleet the service sees, in the issue's shape, and flags a node of
another version."""

from __future__ import annotations

from importlib.metadata import version

import httpx

from runner.service import NodeRecord
from tests.fakes.fake_service import FakeModelService
from tests.fakes.runners import runner_info


async def test_nodes_are_listed_with_their_runners_and_memory(
        client: httpx.AsyncClient, service: FakeModelService) -> None:
    ours = version("switchboard")
    service.fleet = [
        NodeRecord("a", "http://10.0.0.1:8080", ours, ("tiny",),
                   (runner_info("tiny", 1, 4),), 0, {"ram_available": 5}),
        NodeRecord("b", "http://10.0.0.2:8080", "0.0.1", ("tiny",)),
    ]
    answer = await client.get("/api/nodes")
    assert answer.status_code == 200
    first, second = answer.json()["nodes"]
    assert first == {"name": "a", "url": "http://10.0.0.1:8080", "state": "up",
                     "version": ours, "models": ["tiny"], "queue_depth": 0,
                     "runners": [{"runner": "tiny", "model": "tiny", "mode": "chat", "busy": 1,
                                  "slots": 4, "draining": False}],
                     "memory": {"ram_available": 5}}
    assert second["name"] == "b" and second["state"] == "version-mismatch"
