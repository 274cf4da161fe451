"""Fixtures of the in-process gateway tests: the app over a fake service and a fake upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from runner.settings import Settings
from tests.fakes.fake_service import FakeModelService, FakeUpstream, gateway_client


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream(model="tiny") as started:
        yield started


@pytest.fixture
def service(upstream: FakeUpstream) -> FakeModelService:
    return FakeModelService(upstream=(upstream.host, upstream.port))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home")


@pytest.fixture
async def client(settings: Settings, service: FakeModelService
                 ) -> AsyncIterator[httpx.AsyncClient]:
    async with gateway_client(settings, service) as started:
        yield started
