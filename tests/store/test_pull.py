"""Pulling by registry name and by URL: manifests, layers, and what ends up in the store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runner.catalog import open_store
from runner.errors import PullError
from runner.pull import Puller, PullEvent, name_from_url
from runner.settings import Settings
from runner.store import LICENSE_MEDIA, MODEL_MEDIA, PARAMS_MEDIA
from tests.fakes.registry import FakeRegistry, file_sha256


def _settings(tmp_path: Path, registry: FakeRegistry) -> Settings:
    return Settings(home=tmp_path / "home", registry=registry.host, pull_backoff=0.01,
                    pull_stall_timeout=0.5, pull_retries=2)


@pytest.fixture
async def puller(tmp_path: Path, registry: FakeRegistry) -> AsyncIterator[Puller]:
    settings = _settings(tmp_path, registry)
    started = Puller(settings, open_store(settings))
    yield started
    await started.aclose()


def _blob_gets(registry: FakeRegistry) -> list[str]:
    return [path for method, path, _ in registry.requests if method == "GET" and "/blobs/" in path]


async def test_pull_stores_every_layer_and_reports_ollamas_progress(
    puller: Puller, registry: FakeRegistry, small_gguf: Path, tmp_path: Path
) -> None:
    params = tmp_path / "params"
    params.write_text('{"temperature": 0.7}')
    license_file = tmp_path / "license"
    license_file.write_text("Gemma Terms of Use")
    registry.add_model("library/tiny", "q4", [
        (MODEL_MEDIA, registry.add_blob(small_gguf)),
        (PARAMS_MEDIA, registry.add_blob(params)),
        (LICENSE_MEDIA, registry.add_blob(license_file)),
    ])
    events: list[PullEvent] = []
    stored = await puller.pull("tiny:q4", events.append, insecure=True)
    assert stored.display == "tiny:q4" and stored.size == small_gguf.stat().st_size + 38
    statuses = [e.status for e in events]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    progress = [e for e in events if e.digest is not None]
    assert {e.digest for e in progress} == {layer.digest for layer in stored.manifest.layers}
    assert all(e.status == f"pulling {e.digest[7:19]}" for e in progress if e.digest)
    assert puller.store.model_path("tiny:q4").read_bytes() == small_gguf.read_bytes()


async def test_pulling_again_fetches_no_blob(
    puller: Puller, registry: FakeRegistry, small_gguf: Path
) -> None:
    registry.add_model("library/tiny", "latest", [(MODEL_MEDIA, registry.add_blob(small_gguf))])
    await puller.pull("tiny", lambda e: None, insecure=True)
    registry.requests.clear()
    await puller.pull("tiny", lambda e: None, insecure=True)
    assert _blob_gets(registry) == [] and registry.requests[0][1].endswith("/manifests/latest")


async def test_unknown_model_is_a_404_style_error(puller: Puller) -> None:
    with pytest.raises(PullError, match="not found") as caught:
        await puller.pull("nope:1", lambda e: None, insecure=True)
    assert caught.value.status == 404


async def test_manifest_without_gguf_fails_before_fetching_anything(
    puller: Puller, registry: FakeRegistry, tmp_path: Path
) -> None:
    license_file = tmp_path / "license"
    license_file.write_text("MIT")
    registry.add_model("library/weights", "latest",
                       [(LICENSE_MEDIA, registry.add_blob(license_file))])
    with pytest.raises(PullError, match="no GGUF model layer"):
        await puller.pull("weights", lambda e: None, insecure=True)
    assert _blob_gets(registry) == []
    assert puller.store.models() == []


async def test_a_model_layer_that_is_not_gguf_is_refused(
    puller: Puller, registry: FakeRegistry, tmp_path: Path
) -> None:
    fake = tmp_path / "model.safetensors"
    fake.write_bytes(b"\x00" * 4096)
    registry.add_model("library/st", "latest", [(MODEL_MEDIA, registry.add_blob(fake))])
    with pytest.raises(PullError, match="not a GGUF"):
        await puller.pull("st", lambda e: None, insecure=True)
    assert puller.store.models() == [] and list(puller.store.blobs_dir.iterdir()) == []


@pytest.mark.parametrize("name", ["../../etc/passwd", "/abs/name", "a/b/c/d", "ns/..:x"])
async def test_names_with_path_tricks_are_rejected_before_any_request(
    puller: Puller, registry: FakeRegistry, name: str
) -> None:
    with pytest.raises(PullError) as caught:
        await puller.pull(name, lambda e: None, insecure=True)
    assert caught.value.status == 400 and registry.requests == []


async def test_registries_that_want_a_token_get_one(
    puller: Puller, registry: FakeRegistry, small_gguf: Path
) -> None:
    registry.token = "anonymous-pull-token"
    registry.add_model("library/tiny", "latest", [(MODEL_MEDIA, registry.add_blob(small_gguf))])
    await puller.pull("tiny", lambda e: None, insecure=True)
    assert any(path.startswith("/token") for _, path, _ in registry.requests)
    assert puller.store.find("tiny") is not None


async def test_url_pull_verifies_the_sha256_and_names_the_model(
    puller: Puller, registry: FakeRegistry, small_gguf: Path
) -> None:
    url = registry.add_file("Tiny-Model.Q4_K_M.gguf", small_gguf)
    digest = file_sha256(small_gguf)
    with pytest.raises(PullError, match="digest mismatch"):
        await puller.pull_url(url, "f" * 64, lambda e: None)
    stored = await puller.pull_url(url, digest, lambda e: None)
    assert stored.display == "tiny-model.q4_k_m:latest"
    named = await puller.pull_url(url, digest.upper(), lambda e: None, "mine:v1")
    assert named.display == "mine:v1"
    assert puller.store.model_path("mine:v1") == puller.store.model_path("tiny-model.q4_k_m")


def test_names_from_urls_are_valid_store_names() -> None:
    assert name_from_url("https://h/x/Qwen3 0.6B (final).gguf?download=1") == "qwen3-0.6b-final"
    assert name_from_url("https://h/") == "model"


async def test_an_oversized_manifest_is_refused_not_buffered(
    puller: Puller, registry: FakeRegistry
) -> None:
    registry.manifests[("library", "huge", "latest")] = b" " * (5 << 20)
    with pytest.raises(PullError, match="more than"):
        await puller.pull("huge", lambda e: None, insecure=True)
