"""Making a model, as ``ollama create`` and ``ollama cp`` do: a manifest in the store over the
blobs of an existing model (or a GGUF file), plus small layers of its own (system prompt,
template, parameters, messages, license, adapters).

Everything a request names is checked before anything is written: the name, its base, its
parameters, its adapter files. Blobs go in first (each atomic, content-addressed, so a blob
other models use is never touched), the manifest last: a failed create leaves no model
behind, and `rm` of a created model removes only the blobs nobody else references.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from runner.catalog import Catalog
from runner.errors import InvalidNameError, ModelSourceError, ServiceError
from runner.model_defaults import IGNORED_OPTIONS, check_options
from runner.model_source import check_gguf, resolve_source
from runner.store import (
    ADAPTER_MEDIA,
    LICENSE_MEDIA,
    MANIFEST_MEDIA,
    MESSAGES_MEDIA,
    MODEL_MEDIA,
    PARAMS_MEDIA,
    SYSTEM_MEDIA,
    TEMPLATE_MEDIA,
    Layer,
    StoredModel,
)

Progress = Callable[[dict[str, Any]], None]  # one of Ollama's {"status": …} objects


class CreateError(ServiceError, ValueError):
    """A create or copy refused; ``status`` is the HTTP status it answers with."""

    def __init__(self, message: str, status: int = 400, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.param = param


@dataclass(frozen=True)
class CreateRequest:
    """What a model is made of: Ollama's /api/create body, or a Modelfile."""

    model: str
    base: str | None = None  # FROM: a model's name, or a GGUF file's absolute path
    files: Mapping[str, str] = field(default_factory=dict)  # Ollama's: name -> blob digest
    system: str | None = None
    template: str | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)
    messages: tuple[dict[str, str], ...] = ()
    adapters: Mapping[str, str] = field(default_factory=dict)  # Ollama's: name -> blob digest
    adapter_sources: tuple[str, ...] = ()  # a Modelfile's ADAPTER: files or stored models
    license: tuple[str, ...] = ()


class ModelCreator:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.store = catalog.store

    # -- create -------------------------------------------------------------------------------

    async def create(self, request: CreateRequest, emit: Progress) -> StoredModel:
        name = self._new_name(request.model)
        own = self._checked_parameters(request.parameters)
        emit({"status": "reading model metadata"})
        self._imported: list[str] = []  # blobs this create added: gone again if it fails
        try:
            layers = await self._base_layers(request)
            adapters = [await self._adapter(source) for source in request.adapter_sources]
            adapters += [self._uploaded(digest, f"adapter {file}") for file, digest in
                         request.adapters.items()]
        except BaseException:
            self._forget_imports()
            raise
        parameters = self._base_parameters(layers) | own
        # Everything is known to be good: from here on, blobs, then the manifest.
        texts = {SYSTEM_MEDIA: request.system, TEMPLATE_MEDIA: request.template,
                 PARAMS_MEDIA: orjson.dumps(parameters).decode() if parameters else None,
                 MESSAGES_MEDIA: orjson.dumps(list(request.messages)).decode()
                 if request.messages else None}
        for media, text in texts.items():
            if text is None:
                continue
            layers = [layer for layer in layers if layer.media_type != media]
            emit({"status": f"creating {media.rsplit('.', 1)[1]} layer"})
            layers.append(self._small_layer(media, text))
        if request.license:
            layers = [layer for layer in layers if layer.media_type != LICENSE_MEDIA]
            layers += [self._small_layer(LICENSE_MEDIA, text) for text in request.license]
        layers += adapters
        for layer in layers:
            emit({"status": f"using layer {layer.digest}"})
        emit({"status": "writing manifest"})
        manifest = orjson.dumps({"schemaVersion": 2, "mediaType": MANIFEST_MEDIA,
                                 "layers": [layer.model_dump(by_alias=True) for layer in layers]})
        self.store.write_manifest(name, manifest)
        emit({"status": "success"})
        created = self.store.get(name)
        assert created is not None
        return created

    def _new_name(self, text: str) -> Any:
        try:
            name = self.store.parse_name(text)
        except InvalidNameError as exc:
            raise CreateError(str(exc), param="model") from None
        if self.catalog.configured(text) is not None:
            raise CreateError(f"model '{text}' is a configured model; its config entry is "
                              "where it is changed", 409, "model")
        if self.store.get(name) is not None:
            raise CreateError(f"model '{text}' already exists: remove it first "
                              f"(switchboard rm {text}) or give the new one another name",
                              409, "model")
        return name

    async def _base_layers(self, request: CreateRequest) -> list[Layer]:
        if request.files:
            if request.base:
                raise CreateError("give 'from' or 'files', not both", param="from")
            return [self._uploaded(digest, f"file {file}", MODEL_MEDIA)
                    for file, digest in request.files.items()]
        if not request.base:
            raise CreateError("'from' is required: the model or GGUF file to build on",
                              param="from")
        entry = self.catalog.configured(request.base)  # a configured name runs its source
        source = entry.config.source if entry is not None else request.base
        stored = self.store.find(source)
        if stored is not None:
            return list(stored.manifest.layers)
        return [await self._file_layer(source, MODEL_MEDIA, f"FROM {request.base}")]

    async def _file_layer(self, source: str, media: str, what: str) -> Layer:
        """A layer of a GGUF named by path or package, imported into the store."""
        try:
            resolved = await asyncio.to_thread(resolve_source, source, self.catalog.settings.home,
                                               None, self.store)
        except ModelSourceError as exc:
            raise CreateError(f"{what}: no such model or file ({exc})", 404, "from") from None
        try:
            await asyncio.to_thread(check_gguf, resolved)  # before a byte of it is copied
        except ModelSourceError as exc:
            raise CreateError(f"{what}: not a usable GGUF: {exc}", 400, "from") from None
        try:
            digest, size, new = await asyncio.to_thread(self.store.import_blob, resolved)
        except OSError as exc:
            raise CreateError(f"{what}: cannot read it: {exc}", 400, "from") from exc
        if new:
            self._imported.append(digest)
        return Layer(media_type=media, digest=digest, size=size)

    async def _adapter(self, source: str) -> Layer:
        stored = self.store.find(source)
        if stored is not None:  # an adapter pulled as a model of its own: its GGUF
            return Layer(media_type=ADAPTER_MEDIA, digest=stored.manifest.model_layer(
                source).digest, size=stored.manifest.model_layer(source).size)
        return await self._file_layer(source, ADAPTER_MEDIA, f"ADAPTER {source}")

    def _uploaded(self, digest: str, what: str, media: str = ADAPTER_MEDIA) -> Layer:
        try:
            path = self.store.blob_path(digest)
        except InvalidNameError as exc:
            raise CreateError(f"{what}: {exc}") from None
        if not path.is_file():
            raise CreateError(f"{what}: blob {digest} is not in the store: upload it first "
                              "(POST /api/blobs/<digest>)", 400)
        return Layer(media_type=media, digest=digest, size=path.stat().st_size)

    def _base_parameters(self, layers: list[Layer]) -> dict[str, Any]:
        """The base's params layer, which the request's parameters go on top of."""
        merged: dict[str, Any] = {}
        for layer in layers:
            if layer.media_type == PARAMS_MEDIA:
                text = self.store.read_blob_text(layer.digest)
                with contextlib.suppress(orjson.JSONDecodeError):
                    base = orjson.loads(text or "{}")
                    merged |= base if isinstance(base, dict) else {}
        return merged

    @staticmethod
    def _checked_parameters(parameters: Mapping[str, Any]) -> dict[str, Any]:
        """Each parameter checked by its name and type. Ollama's own options that mean
        nothing to llama-server are kept, as Ollama keeps them (loading leaves them out)."""
        checked: dict[str, Any] = {}
        for key, value in parameters.items():
            if key in IGNORED_OPTIONS:
                checked[key] = value
                continue
            try:
                checked |= check_options({key: value})
            except ValueError as exc:
                raise CreateError(f"parameter {exc}".replace("parameter option", "parameter"),
                                  param="parameters") from None
        return checked

    def _forget_imports(self) -> None:
        referenced = {layer.digest for model in self.store.models()
                      for layer in model.manifest.blobs()}
        for digest in self._imported:
            if digest not in referenced:
                self.store.blob_path(digest).unlink(missing_ok=True)

    def _small_layer(self, media: str, text: str) -> Layer:
        digest, size = self.store.write_blob(text.encode())
        return Layer(media_type=media, digest=digest, size=size)

    # -- copy ---------------------------------------------------------------------------------

    def copy(self, source: str, destination: str) -> StoredModel:
        stored = self.store.find(source)
        if stored is None:
            if self.catalog.configured(source) is not None:
                raise CreateError(f"model '{source}' is a configured model: copy its config "
                                  "entry instead", 400, "source")
            raise CreateError(f"model '{source}' not found", 404, "source")
        name = self._new_name(destination)
        raw = self.store.manifest_path(stored.name).read_bytes()
        self.store.write_manifest(name, raw)
        copied = self.store.get(name)
        assert copied is not None
        return copied
