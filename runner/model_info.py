"""What a servable model is, from its GGUF header and the store: for ``switchboard show`` and
``ls`` and for Ollama's ``/api/show`` and ``/api/tags``.

Reading a header takes tens of milliseconds (a 262,144-token vocabulary is skipped, not read),
so facts are cached per file and re-read only when its size or modification time changes. A
packaged model that was never assembled is described without assembling it (that takes
seconds and writes to ``$SWITCHBOARD_HOME``): by name and source alone.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import gguf

from runner.context_window import runner_context
from runner.errors import ModelSourceError
from runner.gguf_header import GGUFError, GGUFInfo, Scalar, read_header
from runner.model_source import (
    PACKAGE_PREFIX,
    is_store_source,
    package_target,
    resolve_source,
    resolve_template,
)
from runner.modes import RunnerMode
from runner.settings import ModelConfig
from runner.store import LICENSE_MEDIA, PARAMS_MEDIA, TEMPLATE_MEDIA, ModelStore
from runner.units import format_count


@dataclass(frozen=True)
class ModelFacts:
    name: str
    config: ModelConfig
    path: Path | None  # None: a packaged model not assembled yet, or a missing file
    size: int = 0
    modified: float = 0.0
    digest: str = ""  # the store manifest's sha256 hex; empty for files outside the store
    architecture: str = ""
    parameters: int = 0
    quantization: str = ""
    context_length: int = 0
    embedding_length: int = 0
    template: str | None = None  # the Jinja chat template in use: configured, else the GGUF's
    template_source: str = "none"  # "configured", "gguf", "layer" (from its Go template), "none"
    metadata: dict[str, Scalar] = field(default_factory=dict)
    layers: dict[str, str] = field(default_factory=dict)  # Ollama's params/template/license
    problem: str | None = None  # why the header could not be read

    @property
    def parameter_size(self) -> str:
        return format_count(self.parameters) if self.parameters else ""

    @property
    def runner_context(self) -> int:
        """The context a runner of this model starts with (0: unknown)."""
        return runner_context(self.config.ctx_size, self.config.args, self.context_length)

    @property
    def capabilities(self) -> list[str]:
        """Ollama's words for what the model can do here."""
        modes = self.config.modes
        found = []
        if RunnerMode.CHAT in modes:
            found.append("completion")
            template = self.template or ""
            if "tools" in template:
                found.append("tools")
            if any(mark in template for mark in _THINKING_MARKS):
                found.append("thinking")
            if self.config.projector:
                found.append("vision")
            if "tokenizer.ggml.fim_pre_token_id" in self.metadata:
                found.append("insert")  # fill-in-the-middle tokens: /infill, Ollama's suffix
        if RunnerMode.EMBEDDINGS in modes:
            found.append("embedding")
        if RunnerMode.RERANKING in modes:
            found.append("rerank")
        return found


# What a chat template that can think writes: the tags or switches of reasoning models.
_THINKING_MARKS = ("<think>", "enable_thinking", "reasoning_content", "<|channel|>")


def quantization_name(file_type: Scalar | None) -> str:
    """``general.file_type`` as Ollama shows it (``Q4_K_M``)."""
    if file_type is None or isinstance(file_type, str):
        return "unknown"
    try:
        return gguf.LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_")
    except ValueError:
        return f"type {file_type}"


class ModelDescriber:
    """Facts about catalog models, with headers cached per file version."""

    def __init__(self, home: Path, store: ModelStore) -> None:
        self.home = home
        self.store = store
        self._headers: dict[Path, tuple[tuple[int, int], GGUFInfo]] = {}

    def _path(self, config: ModelConfig) -> Path | None:
        source = config.source
        if source.startswith(PACKAGE_PREFIX):
            target = package_target(source.removeprefix(PACKAGE_PREFIX), self.home)
            return target if target.is_file() else None
        try:
            return resolve_source(source, self.home, store=self.store)
        except ModelSourceError:
            return None

    def _header(self, path: Path) -> GGUFInfo:
        stat = path.stat()
        version = (stat.st_size, stat.st_mtime_ns)
        cached = self._headers.get(path)
        if cached is not None and cached[0] == version:
            return cached[1]
        info = read_header(path)
        self._headers[path] = (version, info)
        return info

    def describe(self, name: str, config: ModelConfig) -> ModelFacts:
        """Everything known about one model (blocking: it may read a file's header)."""
        stored = self.store.find(config.source) if is_store_source(config.source) else None
        layers: dict[str, str] = {}
        if stored is not None:
            for layer in stored.manifest.layers:
                label = {PARAMS_MEDIA: "params", TEMPLATE_MEDIA: "template",
                         LICENSE_MEDIA: "license"}.get(layer.media_type)
                text = self.store.read_blob_text(layer.digest) if label else None
                if label and text is not None:
                    layers[label] = text
        digest = stored.digest.removeprefix("sha256:") if stored else ""
        path = self._path(config)
        if path is None:
            return ModelFacts(name, config, None, digest=digest, layers=layers)
        stat = path.stat()
        size = stored.size if stored else stat.st_size
        modified = stored.modified if stored else stat.st_mtime
        try:
            info = self._header(path)
        except (GGUFError, OSError) as exc:
            return ModelFacts(name, config, path, size, modified, digest, layers=layers,
                              problem=str(exc))
        template, template_source = self._template(config, info)
        if stored is not None and "template" in layers and template_source in ("configured",
                                                                             "none"):
            # The GGUF has none: what runs was chosen from the registry's Go template.
            template_source = "layer" if config.chat_template or config.args else "none"
        return ModelFacts(
            name, config, path, size, modified, digest,
            architecture=info.architecture,
            parameters=info.parameters,
            quantization=quantization_name(info.metadata.get("general.file_type")),
            context_length=info.arch_int("context_length"),
            embedding_length=info.arch_int("embedding_length"),
            template=template,
            template_source=template_source,
            metadata=info.metadata,
            layers=layers,
        )

    @staticmethod
    def _template(config: ModelConfig, info: GGUFInfo) -> tuple[str | None, str]:
        if config.chat_template:
            with contextlib.suppress(ModelSourceError, OSError):
                return resolve_template(config.chat_template).read_text(), "configured"
        embedded = info.metadata.get("tokenizer.chat_template")
        if isinstance(embedded, str):
            return embedded, "gguf"
        return None, "none"
