"""Backend galleries: YAML indexes of runner builds that ``switchboard backends install`` knows.

A gallery is a file or URL holding a list of entries (or ``{"backends": [...]}``)::

    - name: llama-server-cuda12            # concrete: a uri to install from
      uri: https://example.com/llama-server-cuda12.tar.gz    # or .zip, a directory, a file
      sha256: 0f3a...                      # required for anything fetched over the network
      mirrors: [https://mirror.example.com/llama-server-cuda12.tar.gz]
      alias: cuda12
      description: llama.cpp's server built for CUDA 12
    - name: llama-server-best              # meta: resolved for this machine at install time
      capabilities: {nvidia-cuda-12: llama-server-cuda12, default: llama-server-path}

A relative ``uri`` is relative to the gallery that lists it, so a gallery and its directory
backends can travel together.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urljoin

import httpx
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_GALLERY = 4 << 20  # bytes


class GalleryError(RuntimeError):
    """A gallery that cannot be read or an entry that cannot be used; says which and why."""


def is_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))


def check_name(name: str, what: str = "backend name") -> str:
    if not _NAME.fullmatch(name) or ".." in name:
        raise GalleryError(f"invalid {what} {name!r}: letters, digits, '.', '_' and '-' only")
    return name


class GalleryEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str
    uri: str | None = None
    sha256: str | None = None
    mirrors: tuple[str, ...] = ()
    alias: str | None = None
    description: str = ""
    capabilities: dict[str, str] = Field(default_factory=dict)
    gallery: str = ""  # the gallery that listed it, for metadata.json and relative uris

    @field_validator("name", "alias")
    @classmethod
    def _names(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                check_name(value)
            except GalleryError as exc:
                raise ValueError(str(exc)) from exc
        return value

    @field_validator("sha256")
    @classmethod
    def _digest(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.lower().removeprefix("sha256:")
        if not _SHA256.fullmatch(value):
            raise ValueError("sha256 must be 64 hex digits")
        return value

    @model_validator(mode="after")
    def _meta_or_concrete(self) -> GalleryEntry:
        if self.capabilities and self.uri:
            raise ValueError("an entry has either a uri or a capabilities map, not both")
        if not self.capabilities and not self.uri:
            raise ValueError("an entry needs a uri (or a capabilities map, for a meta backend)")
        return self

    @property
    def is_meta(self) -> bool:
        return bool(self.capabilities)

    def locations(self) -> list[str]:
        """The uri, then the mirrors, each made absolute against the gallery's location."""
        return [_absolute(self.gallery, uri) for uri in (self.uri, *self.mirrors) if uri]


def _absolute(gallery: str, uri: str) -> str:
    if is_url(uri) or uri.startswith("/") or not gallery:
        return uri
    if is_url(gallery):
        return urljoin(gallery, uri)
    return str(Path(gallery).parent / uri)


def parse(text: str, source: str) -> list[GalleryEntry]:
    """The entries of one gallery document; errors name the gallery, the entry and the key."""
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise GalleryError(f"gallery {source}: {exc}") from exc
    if isinstance(loaded, dict):
        loaded = loaded.get("backends", [])
    if loaded is None:
        return []
    if not isinstance(loaded, list):
        raise GalleryError(f"gallery {source}: expected a list of backends")
    entries = []
    for index, raw in enumerate(loaded):
        if not isinstance(raw, dict):
            raise GalleryError(f"gallery {source}: entry {index + 1} is not a mapping")
        try:
            entries.append(GalleryEntry.model_validate({**raw, "gallery": source}))
        except ValidationError as exc:
            first = exc.errors()[0]
            key = ".".join(str(part) for part in first["loc"]) or "entry"
            label = raw.get("name", f"entry {index + 1}")
            raise GalleryError(f"gallery {source}: {label}: {key}: {first['msg']}") from exc
    return entries


async def read_gallery(source: str, client: httpx.AsyncClient) -> list[GalleryEntry]:
    if is_url(source):
        try:
            response = await client.get(source, follow_redirects=True)
        except httpx.HTTPError as exc:
            raise GalleryError(f"gallery {source}: {exc!r}") from exc
        if response.status_code != 200:
            raise GalleryError(f"gallery {source}: HTTP {response.status_code}")
        if len(response.content) > MAX_GALLERY:
            raise GalleryError(f"gallery {source}: larger than {MAX_GALLERY} bytes")
        return parse(response.text, source)
    return await asyncio.to_thread(_read_file, source)


def _read_file(source: str) -> list[GalleryEntry]:
    path = Path(source).absolute()
    try:
        text = path.read_text()
    except OSError as exc:
        raise GalleryError(f"gallery {source}: {exc.strerror or exc}") from exc
    return parse(text, str(path))


async def read_galleries(
    sources: Iterable[str], client: httpx.AsyncClient
) -> tuple[list[GalleryEntry], list[str]]:
    """Every entry of every gallery (earlier galleries win on a name), and the problems met;
    one unreadable gallery does not hide the others."""
    entries: dict[str, GalleryEntry] = {}
    problems: list[str] = []
    for source in sources:
        try:
            for entry in await read_gallery(source, client):
                entries.setdefault(entry.name, entry)
        except GalleryError as exc:
            problems.append(str(exc))
    return list(entries.values()), problems


def find(entries: Iterable[GalleryEntry], name: str) -> GalleryEntry | None:
    """The entry called ``name``, or aliased so."""
    listed = list(entries)
    for entry in listed:
        if entry.name == name:
            return entry
    return next((entry for entry in listed if entry.alias == name), None)
