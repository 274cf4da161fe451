"""Images on every API family, on the real runner with a projector the tests write (random
weights: this proves the pipeline, not eyesight): each family's image form reaches the runner
and is counted in the prompt, a model without a projector says so, and hostile images are
clear errors that never reach a runner."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import ollama
import openai
import pytest

from tests.e2e.server import Served, gemma_models, start_server
from tests.fakes.mmproj import IMAGE_TOKENS, tiny_png, write_mmproj
from tests.fakes.registry import FakeRegistry

pytestmark = pytest.mark.usefixtures("real_variants")
PNG = base64.b64encode(tiny_png()).decode()
DATA_URL = f"data:image/png;base64,{PNG}"


def _parts(url: str) -> list[dict[str, Any]]:
    return [{"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": url}}]


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeRegistry]:
    """A host serving an image by URL, as an allowed image host would."""
    folder = tmp_path_factory.mktemp("pictures")
    (folder / "cat.png").write_bytes(tiny_png())
    with FakeRegistry() as server:
        server.add_file("cat.png", folder / "cat.png")
        yield server


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, gemma_path: Path,
           pictures: FakeRegistry) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("images")
    models = gemma_models(gemma_path)
    models["seer"] = {**models["gemma3:270m"], "aliases": [],
                      "projector": str(write_mmproj(root / "mmproj.gguf"))}
    server = start_server(root, models, {"SWITCHBOARD_IMAGE_URL_HOSTS": "127.0.0.1",
                                         "SWITCHBOARD_MAX_IMAGE_BYTES": "1MiB"})
    yield server
    server.stop()


def _chat(served: Served, content: Any, model: str = "seer") -> httpx.Response:
    return httpx.post(f"{served.url}/v1/chat/completions", timeout=120, json={
        "model": model, "max_tokens": 2, "messages": [{"role": "user", "content": content}]})


def _prompt_tokens(answer: httpx.Response) -> int:
    assert answer.status_code == 200, answer.text
    tokens: int = answer.json()["usage"]["prompt_tokens"]
    return tokens


def test_an_openai_image_reaches_the_projector_and_is_counted(served: Served) -> None:
    without = _prompt_tokens(_chat(served, "What is this?"))
    assert _prompt_tokens(_chat(served, _parts(DATA_URL))) == without + IMAGE_TOKENS
    raw = _prompt_tokens(_chat(served, _parts(PNG)))  # llama-server's raw base64 form too
    assert raw == without + IMAGE_TOKENS
    with openai.OpenAI(base_url=f"{served.url}/v1", api_key="x", max_retries=0) as client:
        reply = client.chat.completions.create(model="seer", max_tokens=2, messages=[
            {"role": "user", "content": _parts(DATA_URL)}])  # type: ignore[misc, list-item]
    assert reply.usage is not None and reply.usage.prompt_tokens == without + IMAGE_TOKENS


def test_ollama_anthropic_and_responses_images_reach_the_projector(served: Served) -> None:
    with ollama.Client(host=served.url) as client:
        said = client.chat(model="seer", options={"num_predict": 2}, messages=[
            {"role": "user", "content": "What is this?", "images": [tiny_png()]}])
    assert said.prompt_eval_count is not None and said.prompt_eval_count > IMAGE_TOKENS
    with anthropic.Anthropic(base_url=served.url, api_key="x", max_retries=0) as claude:
        message = claude.messages.create(model="seer", max_tokens=2, messages=[
            {"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": PNG}},
                {"type": "text", "text": "What is this?"}]}])
    assert message.usage.input_tokens > IMAGE_TOKENS
    responses = httpx.post(f"{served.url}/v1/responses", timeout=120, json={
        "model": "seer", "max_output_tokens": 2, "input": [{"role": "user", "content": [
            {"type": "input_text", "text": "What is this?"},
            {"type": "input_image", "image_url": DATA_URL}]}]})
    assert responses.status_code == 200, responses.text


def test_an_image_by_url_is_fetched_only_from_an_allowed_host(
        served: Served, pictures: FakeRegistry) -> None:
    without = _prompt_tokens(_chat(served, "What is this?"))
    fetched = _chat(served, _parts(f"{pictures.url}/files/cat.png"))
    assert _prompt_tokens(fetched) == without + IMAGE_TOKENS
    elsewhere = _chat(served, _parts("http://169.254.169.254/latest/meta-data"))
    assert elsewhere.status_code == 400 and "data: URL" in elsewhere.json()["error"]["message"]


def test_a_model_without_a_projector_says_it_does_not_support_images(served: Served) -> None:
    refused = _chat(served, _parts(DATA_URL), model="gemma3:270m")
    assert refused.status_code == 400
    assert "model 'gemma3:270m' does not support images" in refused.json()["error"]["message"]
    generate = httpx.post(f"{served.url}/api/generate", timeout=60, json={
        "model": "gemma3:270m", "prompt": "What is this?", "images": [PNG], "stream": False})
    assert generate.status_code == 400 and "does not support images" in generate.json()["error"]


@pytest.mark.parametrize(("url", "says"), [
    ("data:image/png;base64," + base64.b64encode(b"%PDF-1.4 not a picture").decode(),
     "image 1 is not an image"),
    ("data:image/png;base64,@@@not base64@@@", "image 1 is not valid base64"),
    ("data:image/png;base64," + "A" * (2 << 20), "more than SWITCHBOARD_MAX_IMAGE_BYTES"),
    ("file:///etc/passwd", "data: URL"),
])
def test_hostile_images_are_clear_errors_before_a_runner_sees_them(
        served: Served, url: str, says: str) -> None:
    refused = _chat(served, _parts(url))
    assert refused.status_code == 400 and says in refused.json()["error"]["message"], \
        refused.text


def test_a_50_mb_image_is_refused_at_the_door(served: Served) -> None:
    refused = _chat(served, _parts("data:image/png;base64," + "A" * (50 << 20)))
    assert refused.status_code == 413 and refused.json()["error"]["code"] == "body_too_large"


def test_the_projector_counts_in_the_models_memory_estimate(served: Served) -> None:
    assert _prompt_tokens(_chat(served, "hi", model="gemma3:270m")) > 0
    assert _prompt_tokens(_chat(served, "hi")) > 0
    estimates = {m["name"]: m["memory"]["estimated_bytes"]
                 for m in httpx.get(f"{served.url}/api/ps", timeout=5).json()["models"]}
    projector = served.tmpdir.parent / "mmproj.gguf"
    assert estimates["seer"] - estimates["gemma3:270m"] == projector.stat().st_size
