"""Which models exist: the configured ones, then everything in the model store.

A configured name (or alias) wins over a stored model of the same name, so a config can give a
pulled model its own context size or arguments under the name clients already use. A stored
model is servable the moment its manifest is written: no restart, no config edit.
"""

from __future__ import annotations

from runner.settings import ModelConfig, Settings
from runner.store import ModelStore, StoredModel


class Catalog:
    def __init__(self, settings: Settings, store: ModelStore) -> None:
        self.settings = settings
        self.store = store
        # Per stored model (a new object whenever its manifest changes): its config, built once.
        self._configs: dict[str, tuple[StoredModel, ModelConfig]] = {}

    def resolve(self, name: str) -> tuple[str, ModelConfig] | None:
        """The canonical name and config for a name a client sent, or None."""
        configured = self.settings.resolve_model(name)
        if configured is not None:
            return configured
        stored = self.store.find(name)
        if stored is None:
            return None
        key = str(stored.name)
        cached = self._configs.get(key)
        if cached is None or cached[0] is not stored:
            cached = (stored, ModelConfig(source=key))
            self._configs[key] = cached
        return stored.display, cached[1]

    def names(self) -> list[str]:
        """Every servable name: configured ones first, then stored ones not shadowed by them."""
        names = list(self.settings.models)
        for stored in self.store.models():
            if self.settings.resolve_model(stored.display) is None:
                names.append(stored.display)
        return names


def open_store(settings: Settings) -> ModelStore:
    return ModelStore(settings.home / "models", settings.registry)
