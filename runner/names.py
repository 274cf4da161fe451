"""Model names (``[HOST[:PORT]/][NAMESPACE/]NAME[:TAG]``) and blob digests, validated.

Both end up as path components under the store, so everything that is not a plain name
character is refused here, before any path is built: no ``..``, no absolute paths, no empty
parts, no separators smuggled inside a part.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from runner.errors import InvalidNameError

DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

# Ollama's character classes; a host may carry a port.
_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}(:[0-9]{1,5})?")
_NAMESPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,79}")
_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,79}")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class ModelName:
    host: str
    namespace: str
    model: str
    tag: str

    @classmethod
    def parse(cls, text: str, default_host: str) -> ModelName:
        """``text`` with the registry, namespace and tag it leaves out filled in."""
        raw = text.strip()
        if not raw or raw.startswith("/") or "\\" in raw or "//" in raw:
            raise InvalidNameError(f"invalid model name {text!r}")
        parts = raw.split("/")
        last = parts[-1]
        model, colon, tag = last.partition(":")
        if colon and not tag:
            raise InvalidNameError(f"invalid model name {text!r}: empty tag")
        tag = tag or DEFAULT_TAG
        if len(parts) == 1:
            host, namespace = default_host, DEFAULT_NAMESPACE
        elif len(parts) == 2:
            # Docker's rule: a first part with a dot or a port (or localhost) is a registry.
            first = parts[0]
            if "." in first or ":" in first or first == "localhost":
                host, namespace = first, DEFAULT_NAMESPACE
            else:
                host, namespace = default_host, first
        elif len(parts) == 3:
            host, namespace = parts[0], parts[1]
        else:
            raise InvalidNameError(
                f"invalid model name {text!r}: use [HOST/][NAMESPACE/]NAME[:TAG]"
            )
        checks = ((_HOST, host, "registry host"), (_NAMESPACE, namespace, "namespace"),
                  (_MODEL, model, "model name"), (_TAG, tag, "tag"))
        for pattern, value, what in checks:
            if not pattern.fullmatch(value) or ".." in value:
                where = f" in model name {text!r}" if value != raw else ""
                raise InvalidNameError(
                    f"invalid {what} {value!r}{where}: letters, digits, '.', '-' and '_' "
                    "only, as [HOST/][NAMESPACE/]NAME[:TAG]")
        return cls(host.lower(), namespace, model, tag)

    @property
    def repository(self) -> str:
        return f"{self.namespace}/{self.model}"

    @property
    def path(self) -> PurePosixPath:
        """Where the manifest lives under ``manifests/``."""
        return PurePosixPath(self.host, self.namespace, self.model, self.tag)

    def display(self, default_host: str) -> str:
        """The shortest name that parses back to this one, as `ls` and /v1/models show it."""
        short = f"{self.model}:{self.tag}"
        if self.host == default_host.lower():
            return short if self.namespace == DEFAULT_NAMESPACE else f"{self.namespace}/{short}"
        return f"{self.host}/{self.namespace}/{short}"

    def __str__(self) -> str:
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"


def check_digest(digest: str) -> str:
    """``digest`` if it is a sha256 digest in canonical form; raises otherwise."""
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise InvalidNameError(f"invalid digest {digest!r}: expected sha256:<64 hex digits>")
    return digest


def blob_filename(digest: str) -> str:
    """``sha256-<hex>``: the colon form is not portable to every filesystem."""
    return check_digest(digest).replace(":", "-")
