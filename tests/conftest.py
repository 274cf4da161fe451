"""Shared fixtures: the real payloads and model, a fake runner, and a served gateway."""

from __future__ import annotations

import random
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.model_source import resolve_source
from runner.payloads import packaged_variants
from runner.settings import DEFAULT_MODEL, Settings
from tests.fakes.registry import MODEL, FakeRegistry

FAKE_RUNNER = Path(__file__).parent / "fakes" / "fake_llama_server.py"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak-seconds", type=float, default=600.0,
                     help="how long the reliability soak runs (default: 10 minutes)")
    # Here, not in tests/gpu: options must be known before any test directory is collected.
    parser.addoption("--gpu-required", action="store_true",
                     help="tests/gpu fail rather than skip without a GPU (make gpu-check)")
    parser.addoption("--gpu-report", default=str(Path(__file__).parent.parent / "docs" /
                                                 "gpu-check.md"),
                     help="where tests/gpu write their figures")


@pytest.fixture(scope="session")
def gemma_path() -> Path:
    """The real default model, assembled by `make test` beforehand (verified here)."""
    source = Settings().models[DEFAULT_MODEL].source
    return resolve_source(source, Settings().home)


@pytest.fixture(scope="session")
def real_variants() -> dict[str, Path]:
    variants = packaged_variants()
    if not variants:
        pytest.fail("no runner payloads: run `make test` (it builds them) or "
                    "`switchboard build-runners`")
    return variants


@pytest.fixture(scope="session")
def fake_runner() -> Path:
    """The fault-injection runner, runnable as an executable with this interpreter."""
    assert FAKE_RUNNER.stat().st_mode & 0o111, "fake runner lost its exec bit"
    return FAKE_RUNNER


@pytest.fixture(scope="session")
def python() -> str:
    return sys.executable


@pytest.fixture
def registry() -> Iterator[FakeRegistry]:
    """A fault-injecting OCI registry on 127.0.0.1, stopped after the test."""
    with FakeRegistry() as started:
        yield started


@pytest.fixture(scope="module")
def tiny_registry(gemma_path: Path) -> Iterator[FakeRegistry]:
    """A registry on 127.0.0.1 serving the real default model as library/tiny:latest."""
    with FakeRegistry() as started:
        started.add_model("library/tiny", "latest", [(MODEL, started.add_blob(gemma_path))])
        yield started


@pytest.fixture(scope="session")
def small_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 MiB that start like a GGUF: big enough for 16 parts, quick to pull many times."""
    path = tmp_path_factory.mktemp("blobs") / "small.gguf"
    path.write_bytes(b"GGUF" + random.Random(7).randbytes(24 * 2**20 - 4))
    return path

