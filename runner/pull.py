"""Pulling a model into the store: by registry name, or from a plain URL with its sha256.

Progress is reported as Ollama's ``/api/pull`` objects (``status``, ``digest``, ``total``,
``completed``), so the CLI, our ``/api/pull`` and Ollama clients read one vocabulary:
``pulling manifest`` → ``pulling <digest>`` (repeated) → ``verifying sha256 digest`` →
``writing manifest`` → ``success``.

Nothing reaches the manifest directory until every blob is verified in ``blobs/``, and the
manifest is checked for a GGUF layer before a byte of any blob is fetched.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import urlsplit

import orjson

from runner.download import (
    DiskFullError,
    Downloader,
    DownloadError,
    DownloadOptions,
    HostNotAllowedError,
    Progress,
)
from runner.errors import InvalidNameError, PullError, StoreError
from runner.names import ModelName, check_digest
from runner.registry import ManifestNotFoundError, Registry
from runner.settings import Settings
from runner.store import (
    MANIFEST_MEDIA,
    MODEL_MEDIA,
    SOURCE_ANNOTATION,
    Manifest,
    ModelStore,
    StoredModel,
)

GGUF_MAGIC = b"GGUF"


def _failed(exc: Exception) -> PullError:
    """The user's view of a failure, with the HTTP status that fits it."""
    if isinstance(exc, InvalidNameError | StoreError):
        return PullError(str(exc), 400)
    if isinstance(exc, ManifestNotFoundError):
        return PullError(str(exc), 404)
    if isinstance(exc, DiskFullError):
        return PullError(str(exc), 507)
    if isinstance(exc, HostNotAllowedError):
        return PullError(str(exc), 403)
    if isinstance(exc, OSError):
        return PullError(f"cannot write the model store: {exc}", 500)
    return PullError(str(exc))


@dataclass(frozen=True)
class PullEvent:
    status: str
    digest: str | None = None
    total: int | None = None
    completed: int | None = None

    def to_dict(self) -> dict[str, object]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


Emit = Callable[[PullEvent], None]


def is_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))


def name_from_url(url: str) -> str:
    """A store name from a file URL: its file name without .gguf, in name characters."""
    stem = PurePosixPath(urlsplit(url).path).name.removesuffix(".gguf").lower()
    cleaned = re.sub(r"[^a-z0-9_.-]+", "-", stem).strip("-.") or "model"
    return cleaned[:80]


class Puller:
    """Pulls into one store; concurrent pulls of a blob share its download."""

    def __init__(self, settings: Settings, store: ModelStore,
                 downloader: Downloader | None = None) -> None:
        self.store = store
        self.options = DownloadOptions.from_settings(settings)
        self.downloader = downloader or Downloader(store, self.options)

    async def aclose(self) -> None:
        await self.downloader.aclose()

    def _reporter(self, emit: Emit) -> Callable[[Progress], None]:
        last: list[tuple[str, int, int] | None] = [None]

        def report(progress: Progress) -> None:
            key = (progress.status, progress.total, progress.completed)
            if key != last[0]:  # a progress line per change, not per tick
                last[0] = key
                emit(PullEvent(progress.status, progress.digest, progress.total,
                               progress.completed))

        return report

    async def pull(self, text: str, emit: Emit, insecure: bool = False) -> StoredModel:
        """Fetch ``text`` (``[host/][namespace/]name[:tag]``) from its registry."""
        try:
            name = self.store.parse_name(text)
        except InvalidNameError as exc:
            raise _failed(exc) from exc
        registry = Registry(self.downloader.client, self.options, insecure=insecure)
        emit(PullEvent("pulling manifest"))
        try:
            raw = await registry.manifest(name)
            manifest = Manifest.parse(raw, str(name))
            model = manifest.model_layer(text)
            for layer in manifest.blobs():
                await self.downloader.fetch(
                    layer.digest, registry.blob_url(name, layer.digest), layer.size,
                    registry.headers, self._reporter(emit),
                )
        except (DownloadError, StoreError, OSError) as exc:
            raise _failed(exc) from exc
        self._check_gguf(model.digest, text)
        emit(PullEvent("verifying sha256 digest"))
        return self._finish(name, raw, emit)

    async def pull_url(self, url: str, sha256: str, emit: Emit,
                       name_text: str | None = None) -> StoredModel:
        """Fetch one GGUF file from ``url``; it must hash to ``sha256``."""
        try:
            digest = check_digest("sha256:" + sha256.lower().removeprefix("sha256:"))
            name = self.store.parse_name(name_text or name_from_url(url))
        except InvalidNameError as exc:
            raise _failed(exc) from exc
        emit(PullEvent(f"pulling {url}"))
        try:
            await self.downloader.fetch(digest, url, None, None, self._reporter(emit))
        except (DownloadError, OSError) as exc:
            raise _failed(exc) from exc
        self._check_gguf(digest, url)
        emit(PullEvent("verifying sha256 digest"))
        size = self.store.blob_path(digest).stat().st_size
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA,
            "layers": [{"mediaType": MODEL_MEDIA, "digest": digest, "size": size}],
            "annotations": {SOURCE_ANNOTATION: url},
        }
        return self._finish(name, orjson.dumps(manifest), emit)

    def _check_gguf(self, digest: str, what: str) -> None:
        path = self.store.blob_path(digest)
        with path.open("rb") as f:
            magic = f.read(4)
        if magic != GGUF_MAGIC:
            path.unlink(missing_ok=True)  # no manifest will ever reference it
            raise PullError(f"{what}: the model layer is not a GGUF file (it starts with "
                            f"{magic!r}); llama-server cannot run it", 400)

    def _finish(self, name: ModelName, raw: bytes, emit: Emit) -> StoredModel:
        emit(PullEvent("writing manifest"))
        self.store.write_manifest(name, raw)
        stored = self.store.get(name)
        assert stored is not None
        emit(PullEvent("success"))
        return stored
