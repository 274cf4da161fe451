"""Which models exist and where each one's GGUF is: the configured ones, then the store.

This is the one place a name is resolved. A configured name (or alias) wins over a stored model
of the same name, so a config can give a pulled model its own context size or arguments under
the name clients already use. A stored model is servable the moment its manifest is written:
no restart, no config edit. What leaves here is a canonical name and a config, and from the
config a GGUF path (:meth:`Catalog.gguf`): past this module nothing looks a name up again.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from runner.model_layers import stored_config
from runner.model_source import ModelPaths
from runner.settings import ModelConfig, Settings
from runner.store import ModelStore, StoredModel


class Entry(NamedTuple):
    """A servable model: the name it is known by and how it is run."""

    canonical: str
    config: ModelConfig


class Companions(NamedTuple):
    """The GGUFs beside a model's own: what llama-server loads with it."""

    projector: Path | None = None
    draft: Path | None = None
    adapters: tuple[tuple[Path, float], ...] = ()


class Catalog:
    def __init__(self, settings: Settings, store: ModelStore) -> None:
        self.settings = settings
        self.store = store
        # Configured names and aliases, once: settings do not change while we serve.
        self._configured: dict[str, Entry] = {}
        for canonical, config in settings.models.items():
            for alias in config.aliases:
                self._configured.setdefault(alias, Entry(canonical, config))
        for canonical, config in settings.models.items():
            self._configured[canonical] = Entry(canonical, config)  # a name beats an alias
        # Per stored model (a new object whenever its manifest changes): its config, built once.
        self._stored: dict[str, tuple[StoredModel, Entry]] = {}
        self._paths = ModelPaths(settings.home, store)

    def configured(self, name: str) -> Entry | None:
        """The configured model a name or alias means, or None (the store is not asked)."""
        return self._configured.get(name)

    def resolve(self, name: str) -> Entry | None:
        """The model a name a client sent means, or None."""
        entry = self._configured.get(name)
        if entry is not None:
            return entry
        stored = self.store.find(name)
        if stored is None:
            return None
        key = str(stored.name)
        cached = self._stored.get(key)
        if cached is None or cached[0] is not stored:
            cached = (stored, Entry(stored.display, stored_config(self.store, stored, key)))
            self._stored[key] = cached
        return cached[1]

    async def gguf(self, config: ModelConfig) -> Path:
        """The GGUF file a model runs from, checked to be whole (a packaged one is assembled
        on first use, off the event loop)."""
        return await self._paths.path(config.source)

    async def companions(self, config: ModelConfig) -> Companions:
        """The other GGUFs a model runs with (projector, draft, adapters), each resolved and
        checked like the model's own."""
        projector = await self._paths.path(config.projector) if config.projector else None
        draft = await self._paths.path(config.draft) if config.draft else None
        adapters = tuple([(await self._paths.path(a.source), a.scale) for a in config.adapters])
        return Companions(projector, draft, adapters)

    def names(self) -> list[str]:
        """Every servable name: configured ones first, then stored ones not shadowed by them."""
        names = list(self.settings.models)
        for stored in self.store.models():
            if stored.display not in self._configured:
                names.append(stored.display)
        return names


def open_store(settings: Settings) -> ModelStore:
    return ModelStore(settings.home / "models", settings.registry)
