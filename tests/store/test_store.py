from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from runner.catalog import Catalog
from runner.errors import ModelNotInStoreError, StoreError
from runner.locks import hold_shared, release
from runner.names import ModelName
from runner.settings import Settings
from runner.store import LICENSE_MEDIA, MODEL_MEDIA, ModelStore

HOST = "registry.example"


def _blob(store: ModelStore, content: bytes) -> dict[str, object]:
    import hashlib

    digest = "sha256:" + hashlib.sha256(content).hexdigest()
    store.blobs_dir.mkdir(parents=True, exist_ok=True)
    store.blob_path(digest).write_bytes(content)
    return {"digest": digest, "size": len(content)}


def _model(store: ModelStore, name: str, *layers: tuple[str, bytes]) -> None:
    manifest = {"schemaVersion": 2, "layers": [
        {"mediaType": media, **_blob(store, content)} for media, content in layers
    ]}
    store.write_manifest(store.parse_name(name), orjson.dumps(manifest))


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models", HOST)


def test_stored_model_is_found_by_any_spelling_of_its_name(store: ModelStore) -> None:
    _model(store, "tiny:1", (MODEL_MEDIA, b"GGUF one"))
    for spelling in ("tiny:1", "library/tiny:1", f"{HOST}/library/tiny:1"):
        found = store.find(spelling)
        assert found is not None and found.display == "tiny:1"
    assert store.find("tiny") is None  # :latest is another tag
    assert store.model_path("tiny:1").read_bytes() == b"GGUF one"
    assert (store.manifests_dir / HOST / "library" / "tiny" / "1").is_file()


def test_catalog_serves_stored_models_but_config_names_win(store: ModelStore) -> None:
    _model(store, "tiny", (MODEL_MEDIA, b"GGUF"))
    _model(store, "gemma3:270m", (MODEL_MEDIA, b"GGUF other"))
    catalog = Catalog(Settings(), store)
    resolved = catalog.resolve("tiny")
    assert resolved is not None and resolved[0] == "tiny:latest"
    assert resolved[1].source == f"{HOST}/library/tiny:latest"
    configured = catalog.resolve("gemma3:270m")
    assert configured is not None and configured[1].source.startswith("package:")
    assert catalog.names().count("gemma3:270m") == 1 and "tiny:latest" in catalog.names()
    assert catalog.resolve("nothing-here") is None
    assert catalog.resolve("../etc/passwd") is None


def test_catalog_resolves_configured_names_and_aliases_without_the_store(
        store: ModelStore) -> None:
    from runner.settings import ModelConfig

    settings = Settings(models={
        "a": ModelConfig(source="x.gguf", aliases=("shared", "b")),
        "b": ModelConfig(source="y.gguf", aliases=("shared",)),
    })
    catalog = Catalog(settings, store)
    assert catalog.resolve("shared") == ("a", settings.models["a"])  # the first alias wins
    assert catalog.resolve("b") == ("b", settings.models["b"])  # a name beats an alias
    assert catalog.configured("a") is not None and catalog.configured("nope") is None
    _model(store, "nope", (MODEL_MEDIA, b"GGUF"))
    assert catalog.configured("nope") is None and catalog.resolve("nope") is not None


async def test_catalog_gives_a_configured_store_model_its_blob_and_refuses_a_torn_one(
        store: ModelStore, tmp_path: Path) -> None:
    import numpy as np
    from gguf import GGUFWriter

    from runner.errors import ModelSourceError
    from runner.settings import ModelConfig

    writer = GGUFWriter(str(tmp_path / "tiny.gguf"), "gemma3")
    writer.add_tensor("weights", np.zeros((64, 64), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    whole = (tmp_path / "tiny.gguf").read_bytes()
    _model(store, "tiny:q8", (MODEL_MEDIA, whole))
    _model(store, "torn:q8", (MODEL_MEDIA, whole[: len(whole) // 2]))
    settings = Settings(models={"fast": ModelConfig(source="tiny:q8"),
                                "torn": ModelConfig(source="torn:q8")})
    catalog = Catalog(settings, store)
    fast, torn = catalog.resolve("fast"), catalog.resolve("torn")
    assert fast is not None and torn is not None
    assert (await catalog.gguf(fast.config)).read_bytes() == whole
    with pytest.raises(ModelSourceError, match="truncated"):
        await catalog.gguf(torn.config)


def test_rm_frees_blobs_no_other_manifest_references(store: ModelStore) -> None:
    _model(store, "a", (MODEL_MEDIA, b"GGUF shared"), (LICENSE_MEDIA, b"license a"))
    _model(store, "b", (MODEL_MEDIA, b"GGUF shared"))
    removed = store.remove("a")
    assert len(removed) == 1  # the license; the GGUF is still b's
    assert store.model_path("b").read_bytes() == b"GGUF shared"
    assert store.find("a") is None
    assert len(store.remove("b")) == 1
    assert list(store.blobs_dir.iterdir()) == []
    assert list(store.manifests_dir.iterdir()) == []  # empty name dirs pruned


def test_rm_is_refused_while_a_runner_holds_the_model(store: ModelStore) -> None:
    _model(store, "busy", (MODEL_MEDIA, b"GGUF busy"))
    hold = hold_shared(store.model_path("busy"))  # what a RunnerProcess takes for its child
    try:
        with pytest.raises(StoreError, match="in use"):
            store.remove("busy")
        assert store.find("busy") is not None
    finally:
        release(hold)
    store.remove("busy")
    assert store.find("busy") is None


def test_unknown_model_says_how_to_get_it(store: ModelStore) -> None:
    with pytest.raises(ModelNotInStoreError, match="switchboard pull nope"):
        store.model_path("nope")


def test_manifest_without_gguf_layer_is_a_clear_error(store: ModelStore) -> None:
    _model(store, "nogguf", (LICENSE_MEDIA, b"just a license"))
    with pytest.raises(StoreError, match="no GGUF model layer"):
        store.model_path("nogguf")


def test_manifest_with_a_traversing_digest_is_refused(store: ModelStore) -> None:
    raw = orjson.dumps({"schemaVersion": 2, "layers": [
        {"mediaType": MODEL_MEDIA, "digest": "sha256:../../../etc/passwd", "size": 1}]})
    store.write_manifest(ModelName.parse("evil", HOST), raw)
    with pytest.raises(StoreError, match="invalid manifest"):
        store.find("evil")
    assert store.models() == []  # listed as nothing, not as an error


def test_manifest_changes_are_seen_without_restart(store: ModelStore) -> None:
    _model(store, "m", (MODEL_MEDIA, b"GGUF v1"))
    first = store.find("m")
    assert store.find("m") is first  # parsed once while unchanged
    _model(store, "m", (MODEL_MEDIA, b"GGUF v2, longer"))
    second = store.find("m")
    assert second is not None and second is not first
    assert store.model_path("m").read_bytes() == b"GGUF v2, longer"


def test_a_configured_model_may_name_a_store_model(store: ModelStore) -> None:
    from runner.errors import ModelSourceError
    from runner.model_source import resolve_source
    from runner.settings import ModelConfig

    _model(store, "tiny:q8", (MODEL_MEDIA, b"GGUF q8"))
    settings = Settings(models={"fast": ModelConfig(source="tiny:q8", ctx_size=1024)})
    resolved = Catalog(settings, store).resolve("fast")
    assert resolved is not None and resolved[1].ctx_size == 1024
    path = resolve_source(resolved[1].source, store.root.parent, store=store)
    assert path.read_bytes() == b"GGUF q8"
    with pytest.raises(ModelSourceError, match="switchboard pull tiny:q4"):
        resolve_source("tiny:q4", store.root.parent, store=store)
