"""Making models in a real store over a small GGUF: what a create writes, what it refuses
(with nothing written), and that removing a made model leaves its base's blobs alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from runner.catalog import Catalog, open_store
from runner.model_create import CreateError, CreateRequest, ModelCreator
from runner.settings import ModelConfig, Settings
from runner.store import MODEL_MEDIA, PARAMS_MEDIA, SYSTEM_MEDIA
from tests.fakes.gguf import write_empty_gguf


@pytest.fixture
def gguf(tmp_path: Path) -> Path:
    return write_empty_gguf(tmp_path / "base.gguf")


@pytest.fixture
def creator(tmp_path: Path, gguf: Path) -> ModelCreator:
    settings = Settings(home=tmp_path / "home",
                        models={"configured": ModelConfig(source=str(gguf))})
    return ModelCreator(Catalog(settings, open_store(settings)))


async def _create(creator: ModelCreator, **fields: Any) -> list[str]:
    said: list[str] = []
    await creator.create(CreateRequest(**fields), lambda event: said.append(event["status"]))
    return said


def _layers(creator: ModelCreator, name: str) -> dict[str, str]:
    stored = creator.store.find(name)
    assert stored is not None
    return {layer.media_type: layer.digest for layer in stored.manifest.layers}


def _store_files(creator: ModelCreator) -> set[Path]:
    return {p for p in creator.store.root.rglob("*") if p.is_file()}


async def test_a_model_made_from_a_configured_one_is_a_manifest_over_its_gguf(
        creator: ModelCreator) -> None:
    said = await _create(creator, model="pirate", base="configured", system="Arr.",
                         parameters={"num_predict": 3, "stop": ["<x>"]})
    assert said[0] == "reading model metadata" and said[-1] == "success"
    layers = _layers(creator, "pirate")
    assert set(layers) == {MODEL_MEDIA, SYSTEM_MEDIA, PARAMS_MEDIA}
    assert creator.store.read_blob_text(layers[SYSTEM_MEDIA]) == "Arr."
    entry = creator.catalog.resolve("pirate")
    assert entry is not None and entry.config.system == "Arr."  # servable as it stands
    assert entry.config.options == {"num_predict": 3, "stop": ["<x>"]}


async def test_a_model_made_from_a_made_one_keeps_its_layers_and_merges_parameters(
        creator: ModelCreator) -> None:
    await _create(creator, model="pirate", base="configured", system="Arr.",
                  parameters={"num_predict": 3, "temperature": 0.5})
    await _create(creator, model="captain", base="pirate", parameters={"num_predict": 9})
    layers = _layers(creator, "captain")
    assert layers[MODEL_MEDIA] == _layers(creator, "pirate")[MODEL_MEDIA]
    assert creator.store.read_blob_text(layers[SYSTEM_MEDIA]) == "Arr."
    assert orjson.loads(creator.store.read_blob_text(layers[PARAMS_MEDIA]) or "") == {
        "num_predict": 9, "temperature": 0.5}


@pytest.mark.parametrize(("fields", "status", "says"), [
    ({"model": "m", "base": "nosuch:1b"}, 404, "FROM nosuch:1b: no such model or file"),
    ({"model": "m", "base": "configured", "parameters": {"temprature": 1}}, 400,
     "unknown option 'temprature'"),
    ({"model": "m", "base": "configured", "parameters": {"top_k": "many"}}, 400,
     "'top_k' must be an integer"),
    ({"model": "Bad Name!!", "base": "configured"}, 400, "invalid"),
    ({"model": "configured", "base": "configured"}, 409, "is a configured model"),
    ({"model": "m"}, 400, "'from' is required"),
    ({"model": "m", "base": "configured", "adapter_sources": ("/nonexistent/lora.gguf",)},
     404, "ADAPTER /nonexistent/lora.gguf: no such model or file"),
])
async def test_a_create_that_cannot_be_made_is_refused_with_nothing_written(
        creator: ModelCreator, fields: dict[str, Any], status: int, says: str) -> None:
    before = _store_files(creator)
    with pytest.raises(CreateError) as caught:
        await _create(creator, **fields)
    assert caught.value.status == status and says in str(caught.value), str(caught.value)
    assert _store_files(creator) == before


async def test_a_from_file_that_is_not_a_gguf_is_refused_before_it_is_copied(
        creator: ModelCreator, tmp_path: Path) -> None:
    fake = tmp_path / "photo.gguf"
    fake.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 1024)
    with pytest.raises(CreateError, match="not a usable GGUF"):
        await _create(creator, model="m", base=str(fake))
    assert not creator.store.blobs_dir.exists() or not any(creator.store.blobs_dir.iterdir())


async def test_create_over_an_existing_name_is_refused_and_the_model_unchanged(
        creator: ModelCreator) -> None:
    await _create(creator, model="pirate", base="configured", system="Arr.")
    first = _layers(creator, "pirate")
    with pytest.raises(CreateError, match="already exists") as caught:
        await _create(creator, model="pirate", base="configured", system="Other.")
    assert caught.value.status == 409 and _layers(creator, "pirate") == first


async def test_a_copy_shares_the_blobs_and_removing_either_keeps_the_others(
        creator: ModelCreator, gguf: Path) -> None:
    await _create(creator, model="pirate", base=str(gguf), system="Arr.")
    creator.copy("pirate", "pirate-copy")
    assert _layers(creator, "pirate-copy") == _layers(creator, "pirate")
    with pytest.raises(CreateError, match="already exists"):
        creator.copy("pirate", "pirate-copy")
    with pytest.raises(CreateError, match="not found") as missing:
        creator.copy("nosuch", "x")
    assert missing.value.status == 404
    assert creator.store.remove("pirate") == []  # every blob is the copy's too
    model_blob = creator.store.blob_path(_layers(creator, "pirate-copy")[MODEL_MEDIA])
    assert model_blob.is_file()
    assert len(creator.store.remove("pirate-copy")) == 2 and not model_blob.exists()
