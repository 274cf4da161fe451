"""A pulled (or created) model's manifest read whole: every layer beside the GGUF becomes part
of how it runs, as Ollama runs it.

- ``params``: Ollama options, the model's defaults (:mod:`runner.model_defaults`); options
  llama-server has no use for are dropped, as Ollama drops them, and said once.
- ``system``: the system prompt of requests that bring none; ``messages``: put before each
  conversation.
- ``projector`` → ``--mmproj``, ``adapter`` → ``--lora-scaled`` (scale 1), ``draft`` →
  ``--model-draft``: their blobs, by path.
- ``template`` (a Go template, which llama-server cannot run) and ``license`` are shown by
  ``show``; the GGUF's own Jinja template is what runs.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from runner.errors import StoreError
from runner.gguf_header import GGUFError, read_header
from runner.model_defaults import IGNORED_OPTIONS, KNOWN_OPTIONS, check_options
from runner.settings import AdapterConfig, ModelConfig
from runner.store import (
    ADAPTER_MEDIA,
    DRAFT_MEDIA,
    MESSAGES_MEDIA,
    PARAMS_MEDIA,
    PROJECTOR_MEDIA,
    SYSTEM_MEDIA,
    TEMPLATE_MEDIA,
    ModelStore,
    StoredModel,
)

log = logging.getLogger(__name__)

# The small text layers, read whole; a larger one is not what its media type says.
TEXT_LIMIT = 1 << 20


def stored_config(store: ModelStore, stored: StoredModel, source: str) -> ModelConfig:
    """How a stored model runs: its GGUF (``source``) and what its other layers say."""
    fields: dict[str, Any] = {}
    adapters: list[AdapterConfig] = []
    for layer in stored.manifest.layers:
        kind = layer.media_type
        if kind in (PROJECTOR_MEDIA, DRAFT_MEDIA, ADAPTER_MEDIA):
            path = str(store.blob_path(layer.digest))
            if kind == ADAPTER_MEDIA:
                adapters.append(AdapterConfig(source=path))
            else:
                fields["projector" if kind == PROJECTOR_MEDIA else "draft"] = path
            continue
        if kind == TEMPLATE_MEDIA:
            fields |= _template(store, stored, layer.digest)
            continue
        if kind not in (PARAMS_MEDIA, SYSTEM_MEDIA, MESSAGES_MEDIA):
            continue
        text = store.read_blob_text(layer.digest, TEXT_LIMIT)
        if text is None:
            continue  # a blob pulled without it: the model still runs
        if kind == SYSTEM_MEDIA:
            fields["system"] = text
        elif kind == PARAMS_MEDIA:
            fields["options"] = _options(text, stored.display)
        else:
            fields["messages"] = _messages(text, stored.display)
    return ModelConfig(source=source, adapters=tuple(adapters), **fields)


# An Ollama template is Go, which llama-server cannot run; its markers say which chat format
# it writes, and so which template of ours (a bundled Jinja file) or of llama.cpp's built-in
# ones (by name: Jinja off, so no tool calls) writes the same.
_FORMATS = (("<start_of_turn>", "bundled", "gemma"), ("<|im_start|>", "builtin", "chatml"),
            ("<|start_header_id|>", "builtin", "llama3"), ("[INST]", "builtin", "mistral-v7"),
            ("<|assistant|>", "builtin", "phi3"))


def _template(store: ModelStore, stored: StoredModel, digest: str) -> dict[str, Any]:
    """The chat template of a model whose GGUF has none, from its Go template layer; nothing
    when the GGUF has its own (it wins: the layer was written for Ollama's engine)."""
    try:
        info = read_header(store.blob_path(stored.manifest.model_layer(stored.display).digest))
    except (GGUFError, OSError, StoreError):
        return {}
    if isinstance(info.metadata.get("tokenizer.chat_template"), str):
        return {}
    text = store.read_blob_text(digest, TEXT_LIMIT) or ""
    for marker, kind, name in _FORMATS:
        if marker in text:
            if kind == "bundled":
                return {"chat_template": name}
            return {"args": ("--chat-template", name)}
    log.info("%s: its GGUF has no chat template and its Go template is not one we know; "
             "llama-server's default is used", stored.display)
    return {}


def _options(text: str, model: str) -> dict[str, Any]:
    try:
        raw = orjson.loads(text)
    except orjson.JSONDecodeError:
        log.warning("%s: its params layer is not JSON; running it without", model)
        return {}
    if not isinstance(raw, dict):
        return {}
    unused = [name for name in raw if name not in KNOWN_OPTIONS or name in IGNORED_OPTIONS]
    if unused:
        log.info("%s: params %s mean nothing to llama-server; left out", model,
                 ", ".join(unused))
    options: dict[str, Any] = {}
    for name in [name for name in raw if name not in unused]:  # a bad value costs only it
        try:
            options |= check_options({name: raw[name]})
        except ValueError as exc:
            log.warning("%s: params layer: %s; left out", model, exc)
    return options


def _messages(text: str, model: str) -> tuple[dict[str, Any], ...]:
    try:
        raw = orjson.loads(text)
    except orjson.JSONDecodeError:
        raw = None
    if not isinstance(raw, list) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str) for m in raw):
        log.warning("%s: its messages layer is not a list of messages; running it without",
                    model)
        return ()
    return tuple({"role": m["role"], "content": m["content"]} for m in raw)
