"""POST /api/embed (and the older /api/embeddings): Ollama's embeddings over the runner's
``/v1/embeddings``, on the model's embeddings runner. Vectors come back L2-normalised, as
Ollama's do; ``dimensions`` truncates them and normalises again."""

from __future__ import annotations

import math
import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.routing import Route

from gateway.errors import APIError
from gateway.ollama.options import read_options, runner_options
from gateway.relay import Relay
from gateway.request_body import parse_object, require_model
from runner.service import Lease, RunnerMode

PATH = b"/v1/embeddings"


def _truncated(vector: list[float], size: int) -> list[float]:
    cut = vector[:size]
    norm = math.sqrt(sum(x * x for x in cut)) or 1.0
    return [x / norm for x in cut]


class Embeddings:
    """The runner's OpenAI embeddings list as Ollama's answer."""

    def __init__(self, model: str, legacy: bool, dimensions: int | None) -> None:
        self.model = model
        self.legacy = legacy
        self.dimensions = dimensions
        self.started = time.perf_counter()
        self.waited = 0.0

    def begin(self, lease: Lease, waited: float) -> None:
        self.waited = waited

    def whole(self, body: bytes) -> bytes:
        data = orjson.loads(body)
        items = sorted(data.get("data") or [], key=lambda item: item.get("index", 0))
        vectors = [item["embedding"] for item in items]
        if self.dimensions is not None:
            vectors = [_truncated(vector, self.dimensions) for vector in vectors]
        if self.legacy:
            return orjson.dumps({"embedding": vectors[0] if vectors else []})
        usage = data.get("usage") or {}
        return orjson.dumps({
            "model": self.model,
            "embeddings": vectors,
            "total_duration": int((time.perf_counter() - self.started) * 1e9),
            "load_duration": int(self.waited * 1e9),
            "prompt_eval_count": usage.get("prompt_tokens", 0),
        })


def _relay(request: Request, data: dict[str, Any], model: str, inputs: list[str],
           legacy: bool) -> Relay:
    dimensions = data.get("dimensions")
    if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int)
                                   or dimensions < 1):
        raise APIError(400, "'dimensions' must be a positive integer", param="dimensions")
    body: dict[str, Any] = {"model": model, "input": inputs, "encoding_format": "float"}
    if "keep_alive" in data:
        body["keep_alive"] = data["keep_alive"]
    options = runner_options(read_options(data), RunnerMode.EMBEDDINGS)
    return Relay.for_request(request, b"", body, PATH, False, edited=True,
                             options=options, translation=Embeddings(model, legacy, dimensions))


async def embed(request: Request) -> Relay:
    data = parse_object(await request.body())
    model = require_model(data)
    value = data.get("input")
    inputs = [value] if isinstance(value, str) else value
    if not isinstance(inputs, list) or not inputs or not all(isinstance(i, str) for i in inputs):
        raise APIError(400, "'input' must be a string or a non-empty array of strings",
                       param="input")
    return _relay(request, data, model, inputs, legacy=False)


async def embeddings(request: Request) -> Relay:
    data = parse_object(await request.body())
    model = require_model(data)
    prompt = data.get("prompt")
    if not isinstance(prompt, str):
        raise APIError(400, "'prompt' must be a string", param="prompt")
    return _relay(request, data, model, [prompt], legacy=True)


routes = [
    Route("/api/embed", embed, methods=["POST"]),
    Route("/api/embeddings", embeddings, methods=["POST"]),
]
