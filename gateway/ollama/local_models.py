"""Ollama's model routes: GET /api/tags, POST /api/show, DELETE /api/delete, GET /api/version.

Facts come from each model's GGUF header (:mod:`runner.model_info`), read off the event loop.
Ollama shows a Go template and a Modelfile; switchboard's models have a Jinja template (what
the runner applies) and a config entry, so ``template`` is the Jinja text and ``modelfile`` a
Modelfile-style summary of where the model comes from and how it is run.
"""

from __future__ import annotations

import datetime as dt
from importlib.metadata import version
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.errors import APIError, service_errors
from gateway.json_response import JSONBytes
from gateway.request_body import parse_object
from runner.service import ModelFacts, ModelService


def _iso(epoch: float) -> str | None:
    if not epoch:
        return None
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat().replace("+00:00", "Z")


def details(facts: ModelFacts) -> dict[str, Any]:
    family = facts.architecture
    return {"parent_model": "", "format": "gguf", "family": family,
            "families": [family] if family else None,
            "parameter_size": facts.parameter_size, "quantization_level": facts.quantization}


def _requested(data: dict[str, Any]) -> str:
    model = data.get("model", data.get("name"))  # older clients send "name"
    if not isinstance(model, str) or not model:
        raise APIError(400, "'model' is required and must be a non-empty string", param="model")
    return model


async def tags(request: Request) -> Response:
    service: ModelService = request.app.state.service
    facts = await service.all_facts()
    return JSONBytes({"models": [
        {"name": f.name, "model": f.name, "modified_at": _iso(f.modified), "size": f.size,
         "digest": f.digest, "details": details(f)}
        for f in facts
    ]})


def _parameters(facts: ModelFacts) -> str:
    """Ollama's "key value" lines: the model's own defaults (its params layer or config
    ``options``), then the context it runs with."""
    lines = []
    for key, value in facts.config.options.items():
        if key == "num_ctx":
            continue  # said below, as it runs
        for item in value if isinstance(value, list) else [value]:
            shown = orjson.dumps(item).decode() if isinstance(item, str) else item
            lines.append(f"{key} {shown}")
    lines.append(f"num_ctx {facts.config.ctx_size}")
    return "\n".join(lines)


_TEMPLATE_WHY = {
    "configured": "the model's configured chat_template",
    "gguf": "the GGUF's own Jinja template",
    "none": "none in the GGUF: llama-server's built-in default",
    "layer": "none in the GGUF; the format its Go template writes (which llama-server "
             "cannot run itself)",
}


def _modelfile(facts: ModelFacts) -> str:
    config = facts.config
    lines = [f"# Modelfile summarising switchboard's model '{facts.name}'",
             f"# template: {_TEMPLATE_WHY[facts.template_source]}",
             f"FROM {facts.path or config.source}"]
    if facts.template:
        lines.append(f'TEMPLATE """{facts.template}"""')
    if config.system:
        lines.append(f'SYSTEM """{config.system}"""')
    lines += [f"ADAPTER {adapter.source}" for adapter in config.adapters]
    if config.draft:
        lines.append(f"DRAFT {config.draft}")
    lines += [f"PARAMETER {line}" for line in _parameters(facts).splitlines()]
    lines += [f'MESSAGE {m["role"]} """{m["content"]}"""' for m in config.messages]
    if "license" in facts.layers:
        lines.append(f'LICENSE """{facts.layers["license"]}"""')
    return "\n".join(lines) + "\n"


def _model_info(facts: ModelFacts) -> dict[str, Any]:
    # Array-valued keys appear as their lengths in our header reader: left out, not misstated.
    info: dict[str, Any] = {key: value for key, value in facts.metadata.items()
                            if key.startswith(("general.", f"{facts.architecture}."))}
    if facts.parameters:
        info["general.parameter_count"] = facts.parameters
    return info


async def show(request: Request) -> Response:
    model = _requested(parse_object(await request.body()))
    service: ModelService = request.app.state.service
    with service_errors(model):
        facts = await service.facts(model)
    body: dict[str, Any] = {
        "modelfile": _modelfile(facts),
        "parameters": _parameters(facts),
        "template": facts.template or "",
        "details": details(facts),
        "model_info": _model_info(facts),
        "capabilities": facts.capabilities,
        "modified_at": _iso(facts.modified),
        "template_source": facts.template_source,  # ours: which template runs, and why
    }
    if facts.config.system:
        body["system"] = facts.config.system
    if facts.config.messages:
        body["messages"] = list(facts.config.messages)
    if facts.config.projector:
        body["projector_info"] = {"path": facts.config.projector}
    if "license" in facts.layers:
        body["license"] = facts.layers["license"]
    return JSONBytes(body)


async def delete(request: Request) -> Response:
    """Delete a pulled model; a loaded, idle one is unloaded first, as ``ollama rm`` expects.

    One with requests in flight or waiting is refused (409) before anything is touched: the
    check used to come from the store, after the runner had been set draining, so a refused
    delete still unloaded the model once its stream ended."""
    model = _requested(parse_object(await request.body()))
    service: ModelService = request.app.state.service
    with service_errors(model):
        await service.delete(model)
    return Response(status_code=200)


async def version_(request: Request) -> Response:
    return JSONBytes({"version": version("switchboard")})


routes = [
    Route("/api/tags", tags, methods=["GET"]),
    Route("/api/show", show, methods=["POST"]),
    Route("/api/delete", delete, methods=["DELETE"]),
    Route("/api/version", version_, methods=["GET"]),
]
