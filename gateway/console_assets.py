"""The console's one third-party file, uPlot (a small, well-kept time-series chart library),
fetched from the npm registry at set-up time and shipped in the package: the console loads
nothing from a CDN, and nothing built by others is committed.

Pinned here by version and by the sha512 the registry publishes for its tarball (npm's
``integrity``), the way ``runner.build`` pins the llama.cpp sdist; the tarball is cached
beside the payload builds. ``python -m gateway.console_assets`` needs nothing but the standard
library, so a Docker build stage or ``setup.py`` can run it; ``--registry`` names a mirror.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import sys
import tarfile
import urllib.request
from pathlib import Path

log = logging.getLogger(__name__)

PACKAGE = "uplot"
VERSION = "1.6.32"
INTEGRITY = ("sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/"
             "ep3tOkyTxpiQIw==")
# What the console loads, from the tarball's package/ directory; the licence goes with them.
FILES = {"dist/uPlot.iife.min.js": "uPlot.iife.min.js", "dist/uPlot.min.css": "uPlot.min.css",
         "LICENSE": "uPlot.LICENSE"}
VENDOR = Path(__file__).parent / "ui" / "vendor"
DEFAULT_REGISTRY = "https://registry.npmjs.org"
TIMEOUT = 60.0


class AssetError(Exception):
    """The chart library could not be fetched or did not verify."""


def _integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def tarball_url(registry: str | None = None) -> str:
    """Where npm itself fetches the tarball from (the registry's ``dist.tarball``)."""
    root = (registry or DEFAULT_REGISTRY).rstrip("/")
    return f"{root}/{PACKAGE}/-/{PACKAGE}-{VERSION}.tgz"


def present(vendor: Path = VENDOR) -> bool:
    return all((vendor / name).is_file() for name in FILES.values())


def fetch(cache_dir: Path, vendor: Path = VENDOR, registry: str | None = None) -> Path:
    """Put the pinned uPlot files in ``vendor`` (from the cache when it has the tarball)."""
    if present(vendor):
        return vendor
    cached = cache_dir / "npm" / f"{PACKAGE}-{VERSION}.tgz"
    data = cached.read_bytes() if cached.is_file() else b""
    if _integrity(data) != INTEGRITY:
        url = tarball_url(registry)
        log.info("downloading %s %s for the console's charts", PACKAGE, VERSION)
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
                data = response.read()
        except OSError as exc:
            raise AssetError(f"cannot fetch {url}: {exc}") from exc
        got = _integrity(data)
        if got != INTEGRITY:
            raise AssetError(f"{url} has integrity {got}, expected {INTEGRITY}")
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(".partial")
        partial.write_bytes(data)
        partial.replace(cached)
    vendor.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        for member, name in FILES.items():
            extracted = archive.extractfile(f"package/{member}")
            if extracted is None:
                raise AssetError(f"{PACKAGE} {VERSION} has no {member}")
            (vendor / name).write_bytes(extracted.read())
    return vendor


def main(argv: list[str] | None = None) -> int:
    """``python -m gateway.console_assets [--cache DIR] [--registry URL]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m gateway.console_assets")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "switchboard",
                        help="the build cache (default ~/.cache/switchboard)")
    parser.add_argument("--registry", help=f"an npm registry (default {DEFAULT_REGISTRY})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        print(fetch(args.cache, registry=args.registry))
    except AssetError as exc:
        print(f"console assets: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
