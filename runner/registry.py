"""The OCI-style registry protocol Ollama's registry speaks: manifests by tag, blobs by digest.

``GET /v2/<namespace>/<model>/manifests/<tag>`` answers a manifest; ``/v2/<namespace>/<model>/
blobs/<digest>`` answers the blob or redirects to where it is (a CDN). Registries that want a
token say so with ``401`` and ``WWW-Authenticate: Bearer realm=…,service=…,scope=…`` (Docker's
token flow); an anonymous token is fetched and sent from then on.
"""

from __future__ import annotations

import asyncio
import re

import httpx

from runner.download import DownloadError, DownloadOptions
from runner.names import ModelName
from runner.store import MANIFEST_MEDIA, OCI_MANIFEST_MEDIA

_CONNECT_RETRIES = 2
MAX_DOCUMENT = 4 << 20  # bytes: Ollama's manifests are about 1 KiB
_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')


class RegistryError(DownloadError):
    """The registry refused or could not answer; the message says which and why."""


class ManifestNotFoundError(RegistryError, LookupError):
    """The registry has no such model or tag."""


class Registry:
    """A client for one pull: remembers the token a registry handed out."""

    def __init__(self, client: httpx.AsyncClient, options: DownloadOptions,
                 insecure: bool = False) -> None:
        self._client = client
        self._options = options
        self._scheme = "http" if insecure else "https"
        self._token: str | None = None

    def base(self, name: ModelName) -> str:
        mirror = self._options.mirrors.get(name.host)
        root = mirror or f"{self._scheme}://{name.host}"
        return f"{root}/v2/{name.repository}"

    def blob_url(self, name: ModelName, digest: str) -> str:
        return f"{self.base(name)}/blobs/{digest}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    async def manifest(self, name: ModelName) -> bytes:
        url = f"{self.base(name)}/manifests/{name.tag}"
        accept = f"{MANIFEST_MEDIA}, {OCI_MANIFEST_MEDIA}"
        response = await self._get(url, {"Accept": accept})
        if response.status_code == 404:
            raise ManifestNotFoundError(
                f"model '{name.model}:{name.tag}' not found in {name.host}/{name.namespace}"
            )
        if response.status_code != 200:
            raise RegistryError(f"{name.host} answered {response.status_code} for the manifest "
                                f"of {name}: {response.text[:200]}")
        return response.content

    async def _get(self, url: str, headers: dict[str, str]) -> httpx.Response:
        failures = 0
        authorised = False
        while True:
            try:
                response = await self._fetch(url, {**headers, **self.headers})
            except httpx.TooManyRedirects as exc:
                raise RegistryError(f"too many redirects from {url}") from exc
            except httpx.TransportError as exc:
                failures += 1
                # An unreachable registry (DNS, refused) rarely heals within seconds: a user
                # who typed a wrong host should hear so at once, not after a minute of backoff.
                if failures > min(self._options.retries, _CONNECT_RETRIES):
                    raise RegistryError(f"cannot reach the registry at {url}: {exc!r}") from exc
                await asyncio.sleep(self._options.delay(failures))
                continue
            if response.status_code == 401 and not authorised:
                authorised = True
                await self._authorise(response)
                continue
            if response.status_code >= 500 or response.status_code == 429:
                failures += 1
                if failures <= self._options.retries:
                    await asyncio.sleep(self._options.delay(failures))
                    continue
            return response

    async def _fetch(self, url: str, headers: dict[str, str],
                     params: dict[str, str] | None = None) -> httpx.Response:
        """GET with the body capped: a manifest or token is small, and the server is not
        ours to trust with our memory."""
        async with self._client.stream("GET", url, headers=headers, params=params,
                                       follow_redirects=True) as response:
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_DOCUMENT:
                    raise RegistryError(f"{url} sent more than {MAX_DOCUMENT} bytes where a "
                                        "manifest or token was expected")
        return httpx.Response(response.status_code, headers=response.headers,
                              content=bytes(body), request=response.request)

    async def _authorise(self, challenge: httpx.Response) -> None:
        header = challenge.headers.get("www-authenticate", "")
        scheme, _, params = header.partition(" ")
        fields = dict(_CHALLENGE.findall(params))
        if scheme.lower() != "bearer" or "realm" not in fields:
            raise RegistryError(f"the registry requires credentials ({header or 'no challenge'})")
        query = {k: v for k, v in fields.items() if k in ("service", "scope")}
        response = await self._fetch(fields["realm"], {}, params=query)
        if response.status_code != 200:
            raise RegistryError(f"token request to {fields['realm']} answered "
                                f"{response.status_code}")
        body = response.json()
        token = body.get("token") or body.get("access_token")
        if not isinstance(token, str):
            raise RegistryError(f"token response from {fields['realm']} carries no token")
        self._token = token
