"""Images in a request, on every API family, checked before they reach a runner.

The forms: OpenAI's ``image_url`` parts (a ``data:`` URL, raw base64, or an http(s) URL),
the Responses API's ``input_image`` parts, Anthropic's ``image`` blocks (a base64 ``source``,
or a ``url`` one), and Ollama's ``images`` (already OpenAI parts after translation).

- A model without a vision projector gets a 400 naming it, never a silent drop or a 500.
- Base64 is sized from its length before it is decoded (``max_image_bytes``), then decoded
  strictly and must start like an image the runner reads (PNG, JPEG, GIF, BMP, WebP …).
- An http(s) image is fetched here, only from ``image_url_hosts`` (no redirects, bounded in
  size and time), and goes on inline: llama-server would fetch whatever URL a client named,
  from inside this server's network.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from gateway.errors import APIError
from runner.service import ModelNotFoundError, ModelService
from runner.settings import Settings

# What a runner's image loader (stb_image) reads, by the bytes a file starts with.
_MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"),
          (b"GIF87a", "image/gif"), (b"GIF89a", "image/gif"), (b"BM", "image/bmp"),
          (b"RIFF", "image/webp"))
_FETCH_TIMEOUT = 10.0  # seconds for an allowed host to send an image
_THREAD_ABOVE = 1 << 20  # base64 past this is decoded off the event loop


@dataclass
class Image:
    """One image part: where its value sits (``holder[key]``), and how it is written."""

    holder: dict[str, Any]
    key: str
    anthropic: bool = False  # a ``source`` block: base64 in ``data``, or ``url``

    @property
    def value(self) -> str:
        value = self.holder.get(self.key)
        return value if isinstance(value, str) else ""

    def inline(self, media_type: str, data: bytes) -> None:
        encoded = base64.b64encode(data).decode()
        if self.anthropic:
            self.holder.clear()
            self.holder.update({"type": "base64", "media_type": media_type, "data": encoded})
        else:
            self.holder[self.key] = f"data:{media_type};base64,{encoded}"


def find_images(data: dict[str, Any]) -> list[Image]:
    """Every image part of a body bound for a runner, in order."""
    return list(_images(data))


def _images(data: dict[str, Any]) -> Iterator[Image]:
    for field in ("messages", "input"):
        items = data.get(field)
        if not isinstance(items, list):
            continue
        for item in items:
            if not isinstance(item, dict):
                continue
            content = item.get("content")
            parts = content if isinstance(content, list) else [item]
            for part in parts:
                if isinstance(part, dict):
                    yield from _image_of(part)


def _image_of(part: dict[str, Any]) -> Iterator[Image]:
    kind = part.get("type")
    if kind == "image_url":
        url = part.get("image_url")
        if isinstance(url, dict):
            yield Image(url, "url")
        elif isinstance(url, str):
            yield Image(part, "image_url")
    elif kind == "input_image" and isinstance(part.get("image_url"), str):
        yield Image(part, "image_url")
    elif kind == "image" and isinstance(part.get("source"), dict):
        source = part["source"]
        yield Image(source, "url" if source.get("type") == "url" else "data", anthropic=True)


class ImageCheck:
    """The checks of one server's settings; ``fetch`` gets an allowed URL's bytes."""

    def __init__(self, settings: Settings,
                 fetch: Callable[[str, int], Awaitable[bytes | str]] | None = None) -> None:
        self.max_bytes = settings.max_image_bytes or 0
        self.hosts = {host.lower() for host in settings.image_url_hosts}
        self._fetch = fetch or _fetch

    async def prepare(self, service: ModelService, model: str, images: list[Image]) -> bool:
        """Refuse what cannot go to ``model``'s runner; fetch and inline what may; whether
        any image was rewritten (fetched). Raises :class:`APIError` (400) naming the image
        by its place in the request."""
        try:
            facts = await service.facts(model)
        except ModelNotFoundError:
            facts = None  # another node's model: its node checks on its side of the hop
        if facts is not None and "vision" not in facts.capabilities:
            raise APIError(400, f"model '{model}' does not support images: it has no vision "
                           "projector (a projector layer, or `projector:` in its config)",
                           param="messages", code="model_not_supported")
        fetched = False
        for number, image in enumerate(images, 1):
            fetched = await self._check(number, image) or fetched
        return fetched

    async def _check(self, number: int, image: Image) -> bool:
        value = image.value
        if image.anthropic and image.key == "data":
            payload = value
        elif value.startswith("data:"):
            header, _, payload = value.partition(",")
            if ";base64" not in header:
                raise _refuse(number, "is a data: URL that is not base64")
        elif value.startswith(("http://", "https://")):
            media_type, data = await self._fetched(number, value)
            image.inline(media_type, data)
            return True
        elif value.startswith("file:"):
            raise _refuse(number, "is a file: URL: send the image inline, as base64")
        else:
            payload = value  # llama-server also takes raw base64
        if len(payload) > _THREAD_ABOVE:  # decoding megabytes would stall every stream
            await asyncio.to_thread(self._decoded, number, payload)
        else:
            self._decoded(number, payload)
        return False

    def _decoded(self, number: int, payload: str) -> bytes:
        # Sized from its length first: a 50 MB string is refused without decoding it.
        if self.max_bytes and len(payload) * 3 // 4 > self.max_bytes + 2:
            raise _refuse(number, f"is about {len(payload) * 3 // 4} bytes, more than "
                          f"SWITCHBOARD_MAX_IMAGE_BYTES ({self.max_bytes})", "limit_exceeded")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise _refuse(number, "is not valid base64") from None
        _media_type(number, data)
        return data

    async def _fetched(self, number: int, url: str) -> tuple[str, bytes]:
        host = (urlsplit(url).hostname or "").lower()
        if host not in self.hosts:
            allowed = ", ".join(sorted(self.hosts)) or "none are"
            raise _refuse(number, f"is a URL on {host or '?'}, not a host images may come "
                          f"from (SWITCHBOARD_IMAGE_URL_HOSTS: {allowed}); send it inline")
        data = await self._fetch(url, self.max_bytes)
        if isinstance(data, str):
            raise _refuse(number, f"could not be fetched from {host}: {data}")
        return _media_type(number, data), data


def _media_type(number: int, data: bytes) -> str:
    for magic, media_type in _MAGIC:
        if data.startswith(magic):
            return media_type
    raise _refuse(number, "is not an image (PNG, JPEG, GIF, BMP or WebP)")


def _refuse(number: int, why: str, code: str = "invalid_image") -> APIError:
    return APIError(400, f"image {number} {why}", param="messages", code=code)


async def _fetch(url: str, limit: int) -> bytes | str:
    """An allowed host's image, or why not: no redirect is followed (it could point anywhere),
    and a body past ``limit`` is cut off."""
    try:
        async with (httpx.AsyncClient(timeout=_FETCH_TIMEOUT, follow_redirects=False) as client,
                    client.stream("GET", url) as response):
            if response.status_code != 200:
                return f"it answered HTTP {response.status_code}"
            chunks, size = [], 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if limit and size > limit:
                    return f"it is more than SWITCHBOARD_MAX_IMAGE_BYTES ({limit})"
                chunks.append(chunk)
            return b"".join(chunks)
    except httpx.HTTPError as exc:
        return str(exc) or type(exc).__name__
