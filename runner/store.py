"""The model store under ``$SWITCHBOARD_HOME/models``: manifests by name, blobs by digest.

Layout (Ollama's, so its registry's manifests are stored as fetched)::

    manifests/<host>/<namespace>/<model>/<tag>   the manifest JSON, byte for byte
    blobs/sha256-<hex>                           complete, verified content only
    partial/sha256-<hex>.{partial,json,lock}     downloads under way (see runner.download)

A blob reaches ``blobs/`` only by an atomic rename after its digest was verified, and a manifest
is written only after all of its blobs are there, so anything a reader finds is whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from runner.errors import InvalidNameError, ModelNotInStoreError, StoreError
from runner.locks import in_use
from runner.names import ModelName, blob_filename, check_digest

MODEL_MEDIA = "application/vnd.ollama.image.model"
TEMPLATE_MEDIA = "application/vnd.ollama.image.template"
PARAMS_MEDIA = "application/vnd.ollama.image.params"
LICENSE_MEDIA = "application/vnd.ollama.image.license"
SYSTEM_MEDIA = "application/vnd.ollama.image.system"
MESSAGES_MEDIA = "application/vnd.ollama.image.messages"
PROJECTOR_MEDIA = "application/vnd.ollama.image.projector"
ADAPTER_MEDIA = "application/vnd.ollama.image.adapter"
DRAFT_MEDIA = "application/vnd.ollama.image.draft"
MANIFEST_MEDIA = "application/vnd.docker.distribution.manifest.v2+json"
OCI_MANIFEST_MEDIA = "application/vnd.oci.image.manifest.v1+json"
SOURCE_ANNOTATION = "org.opencontainers.image.source"
_NAMES_KEPT = 4096  # parsed names kept by ModelStore.find before it starts afresh


class Layer(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    media_type: str = Field(alias="mediaType")
    digest: str
    size: int = Field(ge=0)

    @field_validator("digest")
    @classmethod
    def _digest(cls, value: str) -> str:
        try:
            return check_digest(value)
        except InvalidNameError as exc:
            raise ValueError(str(exc)) from exc


class Manifest(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    schema_version: int = Field(2, alias="schemaVersion")
    media_type: str = Field(MANIFEST_MEDIA, alias="mediaType")
    config: Layer | None = None
    layers: list[Layer]
    annotations: dict[str, object] = Field(default_factory=dict)  # OCI's: strings, if kept

    @property
    def origin(self) -> str | None:
        """The URL a model pulled by URL came from (OCI's source annotation)."""
        origin = self.annotations.get(SOURCE_ANNOTATION)
        return origin if isinstance(origin, str) else None

    @classmethod
    def parse(cls, raw: bytes, what: str) -> Manifest:
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise StoreError(f"invalid manifest for {what}: {where}: {first['msg']}") from exc

    def model_layer(self, what: str) -> Layer:
        """The GGUF layer; a manifest without one is not something llama-server can run."""
        for layer in self.layers:
            if layer.media_type == MODEL_MEDIA:
                return layer
        kinds = ", ".join(sorted({layer.media_type for layer in self.layers})) or "none"
        raise StoreError(
            f"manifest for {what} has no GGUF model layer ({MODEL_MEDIA}); its layers: {kinds}"
        )

    def blobs(self) -> list[Layer]:
        return [*self.layers, *([self.config] if self.config is not None else [])]


@dataclass(frozen=True)
class StoredModel:
    name: ModelName
    display: str
    manifest: Manifest
    digest: str  # of the manifest bytes: what `ls` shows as the model's id
    size: int
    modified: float


class ModelStore:
    """Reads and changes the store; safe to share between a server and CLI processes."""

    def __init__(self, root: Path, default_host: str) -> None:
        self.root = root
        self.default_host = default_host
        self.blobs_dir = root / "blobs"
        self.manifests_dir = root / "manifests"
        self.partial_dir = root / "partial"
        self._parsed: dict[Path, tuple[tuple[int, int], StoredModel]] = {}
        # A name as typed → its parse, or None if invalid: pure, and asked per request (a
        # fleet asks it of every name another node serves). Bounded: names come from clients.
        self._names: dict[str, tuple[ModelName, Path] | None] = {}

    def parse_name(self, text: str) -> ModelName:
        return ModelName.parse(text, self.default_host)

    def blob_path(self, digest: str) -> Path:
        return self.blobs_dir / blob_filename(digest)

    def partial_path(self, digest: str) -> Path:
        """The partial file of a download; its state and lock files sit beside it."""
        return self.partial_dir / (blob_filename(digest) + ".partial")

    def has_blob(self, digest: str, size: int | None = None) -> bool:
        try:
            found = self.blob_path(digest).stat().st_size
        except FileNotFoundError:
            return False
        return size is None or found == size

    def manifest_path(self, name: ModelName) -> Path:
        return self.manifests_dir / name.path

    # -- reading ----------------------------------------------------------------------------

    def get(self, name: ModelName) -> StoredModel | None:
        """The stored model of that name, or None. Parsed once per manifest version: request
        routing asks this for every request to a store model."""
        return self._get_at(name, self.manifest_path(name))

    def _get_at(self, name: ModelName, path: Path) -> StoredModel | None:
        try:
            stat = path.stat()
        except FileNotFoundError:
            return None
        # The inode changes with every write (they are renames), even within one mtime tick.
        version = (stat.st_ino, stat.st_mtime_ns)
        cached = self._parsed.get(path)
        if cached is not None and cached[0] == version:
            return cached[1]
        raw = path.read_bytes()
        manifest = Manifest.parse(raw, str(name))
        model = StoredModel(
            name=name,
            display=name.display(self.default_host),
            manifest=manifest,
            digest="sha256:" + hashlib.sha256(raw).hexdigest(),
            size=sum(layer.size for layer in manifest.blobs()),
            modified=stat.st_mtime,
        )
        self._parsed[path] = (version, model)
        return model

    def find(self, text: str) -> StoredModel | None:
        """Like :meth:`get` for a name as a user typed it; None if it is not a valid name."""
        if text in self._names:
            known = self._names[text]
        else:
            try:
                name = self.parse_name(text)
                known = (name, self.manifest_path(name))
            except InvalidNameError:
                known = None
            if len(self._names) >= _NAMES_KEPT:
                self._names.clear()
            self._names[text] = known
        return self._get_at(*known) if known is not None else None

    def require(self, text: str) -> StoredModel:
        model = self.get(self.parse_name(text))
        if model is None:
            raise ModelNotInStoreError(
                f"model '{text}' not found: pull it first (switchboard pull {text})"
            )
        return model

    def model_path(self, text: str) -> Path:
        """The GGUF blob of a stored model (raises if it is absent or incomplete)."""
        model = self.require(text)
        layer = model.manifest.model_layer(text)
        path = self.blob_path(layer.digest)
        if not self.has_blob(layer.digest, layer.size):
            raise StoreError(f"model '{text}' is missing its blob {layer.digest[:19]}: "
                             f"pull it again (switchboard pull {text})")
        return path

    def models(self) -> list[StoredModel]:
        """Every stored model, newest first; unreadable manifests are skipped."""
        found: list[StoredModel] = []
        if not self.manifests_dir.is_dir():
            return found
        for path in self.manifests_dir.glob("*/*/*/*"):
            if not path.is_file():
                continue
            host, namespace, model, tag = path.relative_to(self.manifests_dir).parts
            try:
                stored = self.get(ModelName.parse(f"{host}/{namespace}/{model}:{tag}", host))
            except (InvalidNameError, StoreError, OSError):
                continue
            if stored is not None:
                found.append(stored)
        return sorted(found, key=lambda m: m.modified, reverse=True)

    def read_blob_text(self, digest: str, limit: int = 1 << 20) -> str | None:
        try:
            with self.blob_path(digest).open("rb") as f:
                return f.read(limit).decode("utf-8", "replace")
        except FileNotFoundError:
            return None

    # -- writing ----------------------------------------------------------------------------

    def write_manifest(self, name: ModelName, raw: bytes) -> None:
        """Store ``raw`` as the manifest of ``name``; atomic, so readers see old or new."""
        path = self.manifest_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(raw)
        tmp.replace(path)

    def write_blob(self, data: bytes) -> tuple[str, int]:
        """Store ``data`` as a blob (a small layer: a system prompt, params); its (digest,
        size). Atomic, and a blob already there is left as it is."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        path = self.blob_path(digest)
        if not self.has_blob(digest, len(data)):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        return digest, len(data)

    def import_blob(self, source: Path) -> tuple[str, int, bool]:
        """Store the file ``source`` as a blob (blocking); its (digest, size, whether it is
        new to the store). Copied and
        hashed in one pass, so the digest is of the bytes stored even if the file changes
        meanwhile (a link would let a later change in place change the blob), and renamed
        into place once whole, so no reader sees part of it."""
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.blobs_dir / f".import.{os.getpid()}.{time.monotonic_ns()}.tmp"
        hasher = hashlib.sha256()
        size = 0
        try:
            with source.open("rb") as src, tmp.open("wb") as out:
                while chunk := src.read(1 << 20):
                    hasher.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
            digest = "sha256:" + hasher.hexdigest()
            new = not self.has_blob(digest, size)
            if new:
                tmp.replace(self.blob_path(digest))
        finally:
            tmp.unlink(missing_ok=True)
        return digest, size, new

    async def receive_blob(self, digest: str, chunks: AsyncIterator[bytes],
                           limit: int | None = None) -> int:
        """Store the bytes of ``chunks`` as the blob ``digest`` (Ollama's blob upload);
        their size. Hashed as they arrive and renamed into place only if they hash to
        ``digest``: a wrong or cut-off upload leaves nothing. ValueError says why not."""
        check_digest(digest)
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.blobs_dir / f".upload.{os.getpid()}.{time.monotonic_ns()}.tmp"
        hasher = hashlib.sha256()
        size = 0
        try:
            with tmp.open("wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if limit is not None and size > limit:
                        raise ValueError(f"the blob is larger than {limit} bytes")
                    hasher.update(chunk)
                    await asyncio.to_thread(out.write, chunk)
            got = "sha256:" + hasher.hexdigest()
            if got != digest:
                raise ValueError(f"the upload hashes to {got}, not {digest}")
            tmp.replace(self.blob_path(digest))
        finally:
            tmp.unlink(missing_ok=True)
        return size

    def remove(self, text: str) -> list[str]:
        """Delete a model's manifest and every blob no other manifest references; returns the
        digests removed. Refused while a runner holds the model's GGUF."""
        model = self.require(text)
        gguf = next((layer for layer in model.manifest.layers if layer.media_type == MODEL_MEDIA),
                    None)
        # A GGUF another model shares stays: a runner of that model may hold it meanwhile.
        shared = {layer.digest for other in self.models() if other.name != model.name
                  for layer in other.manifest.blobs()}
        if gguf is not None and gguf.digest not in shared and in_use(self.blob_path(gguf.digest)):
            raise StoreError(f"model '{text}' is in use by a loaded runner: unload it first "
                             f"(switchboard stop {text})")
        path = self.manifest_path(model.name)
        path.unlink()
        self._parsed.pop(path, None)
        for parent in path.parents:  # prune empty name directories up to manifests/
            if parent == self.manifests_dir:
                break
            with contextlib.suppress(OSError):
                parent.rmdir()
        referenced = {layer.digest for other in self.models() for layer in other.manifest.blobs()}
        removed = []
        for layer in model.manifest.blobs():
            if layer.digest in referenced or layer.digest in removed:
                continue
            with contextlib.suppress(FileNotFoundError):
                self.blob_path(layer.digest).unlink()
            removed.append(layer.digest)
        return removed


def age(epoch: float, now: float | None = None) -> str:
    """'3 minutes ago', as `ls` shows modification times."""
    seconds = max(0, int((time.time() if now is None else now) - epoch))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = seconds // size
            return f"{count} {unit}{'s' if count > 1 else ''} ago"
    return "just now"
