"""Shared fixtures: the real payloads and model, a fake runner, and a served gateway."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from runner.models import resolve_source
from runner.payloads import packaged_variants
from runner.settings import DEFAULT_MODEL, Settings

FAKE_RUNNER = Path(__file__).parent / "fakes" / "fake_llama_server.py"


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
