"""Image parts found in every family's body, checked, and URLs from allowed hosts inlined,
without a runner: the checks' own logic, each family's form."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from gateway.errors import APIError
from gateway.images import ImageCheck, find_images
from runner.settings import Settings
from tests.fakes.fake_service import FakeModelService
from tests.fakes.mmproj import tiny_png

PNG = tiny_png()
B64 = base64.b64encode(PNG).decode()


def _bodies() -> dict[str, dict[str, Any]]:
    return {
        "openai": {"messages": [{"role": "user", "content": [
            {"type": "text", "text": "x"}, {"type": "image_url", "image_url": {"url": B64}}]}]},
        "responses": {"input": [{"role": "user", "content": [
            {"type": "input_image", "image_url": f"data:image/png;base64,{B64}"}]}]},
        "anthropic": {"messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "url", "url": "https://pics.example/cat.png"}}]}]},
    }


def test_each_familys_image_part_is_found() -> None:
    found = {family: len(find_images(body)) for family, body in _bodies().items()}
    assert found == {"openai": 1, "responses": 1, "anthropic": 1}
    assert find_images({"messages": [{"role": "user", "content": "no pictures"}]}) == []


async def test_an_allowed_url_is_fetched_and_inlined_in_its_familys_form() -> None:
    fetched: list[str] = []

    async def fetch(url: str, limit: int) -> bytes | str:
        fetched.append(url)
        return PNG

    service = FakeModelService(vision={"tiny"})
    check = ImageCheck(Settings(image_url_hosts=("pics.example",)), fetch)
    body = _bodies()["anthropic"]
    images = find_images(body)
    await check.prepare(service, "tiny", images)
    assert fetched == ["https://pics.example/cat.png"]
    assert body["messages"][0]["content"][0]["source"] == {
        "type": "base64", "media_type": "image/png", "data": B64}


async def test_a_model_without_a_projector_is_refused_before_any_image_is_read() -> None:
    async def fetch(url: str, limit: int) -> bytes | str:
        raise AssertionError("nothing may be fetched for a model that cannot see")

    with pytest.raises(APIError, match="model 'tiny' does not support images"):
        await ImageCheck(Settings(image_url_hosts=("pics.example",)), fetch).prepare(
            FakeModelService(), "tiny", find_images(_bodies()["anthropic"]))
