"""A pulled model used whole, on the real runner and model: the params, system, messages and
license layers of its manifest shape every answer and are shown by /api/show."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.e2e.server import Served, environment, gemma_models, start_server
from tests.fakes.registry import MODEL, FakeRegistry

pytestmark = pytest.mark.usefixtures("real_variants")
LAYER = "application/vnd.ollama.image."
HI = [{"role": "user", "content": "Say hi"}]


@pytest.fixture(scope="module")
def registry(gemma_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeRegistry]:
    blobs = tmp_path_factory.mktemp("layers")
    texts = {
        "params": orjson.dumps({"num_predict": 3, "temperature": 0, "stop": ["<zzz>"],
                                "use_mmap": True, "num_ctx": 1024}),
        "system": b"You are a pirate. Answer every question as a pirate would, at length.",
        "messages": orjson.dumps([{"role": "user", "content": "Ahoy?"},
                                  {"role": "assistant", "content": "Ahoy!"}]),
        "license": b"Gemma Terms of Use",
        # Ollama's Go template for Gemma: this GGUF has no template of its own.
        "template": b"<start_of_turn>user\n{{ .Prompt }}<end_of_turn>\n<start_of_turn>model\n",
    }
    with FakeRegistry() as served:
        gguf = served.add_blob(gemma_path)
        layers = [(MODEL, gguf)]
        for kind, text in texts.items():
            path = blobs / kind
            path.write_bytes(text)
            layers.append((LAYER + kind, served.add_blob(path)))
        served.add_model("library/whole", "latest", layers)
        served.add_model("library/bare", "latest", [(MODEL, gguf)])
        served.add_model("bartowski/Tiny-GGUF", "Q4_K_M", [(MODEL, gguf)])
        yield served


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("whole")


@pytest.fixture(scope="module")
def served(root: Path, registry: FakeRegistry, gemma_path: Path) -> Iterator[Served]:
    server = start_server(root, gemma_models(gemma_path), {
        "SWITCHBOARD_REGISTRY": registry.host,
        # Hugging Face's registry, played by the loopback one under its name.
        "SWITCHBOARD_REGISTRY_MIRRORS": f"hf.co={registry.url}"})
    for name in ("whole", "bare"):
        pulled = httpx.post(f"{server.url}/api/pull", timeout=120,
                            json={"model": name, "insecure": True, "stream": False})
        assert pulled.status_code == 200, pulled.text
    yield server
    server.stop()


def _chat(served: Served, model: str, **extra: object) -> dict[str, object]:
    answer = httpx.post(f"{served.url}/v1/chat/completions", timeout=120,
                        json={"model": model, "messages": HI, **extra})
    assert answer.status_code == 200, answer.text
    usage: dict[str, object] = answer.json()["usage"]
    return usage


def test_a_params_layer_is_the_models_default_and_the_request_overrides_it(
        served: Served) -> None:
    assert _chat(served, "whole")["completion_tokens"] == 3  # before: until the context filled
    assert _chat(served, "whole", max_tokens=5)["completion_tokens"] == 5
    ollama = httpx.post(f"{served.url}/api/generate", timeout=120, json={
        "model": "whole", "prompt": "Say hi", "stream": False})
    assert ollama.status_code == 200 and ollama.json()["eval_count"] == 3


def test_the_system_and_messages_layers_go_before_a_conversation_that_has_none(
        served: Served) -> None:
    def prompt(**extra: object) -> str:
        applied = httpx.post(f"{served.url}/apply-template", timeout=120,
                             json={"model": "whole", "messages": HI, **extra})
        assert applied.status_code == 200, applied.text
        text: str = applied.json()["prompt"]
        return text

    whole = prompt()
    assert "You are a pirate." in whole and whole.index("Ahoy?") < whole.index("Say hi")
    own = prompt(messages=[{"role": "system", "content": "Be brief."}, *HI])
    assert "Be brief." in own and "pirate" not in own and "Ahoy!" in own
    bare = httpx.post(f"{served.url}/apply-template", timeout=120,
                      json={"model": "bare", "messages": HI}).json()["prompt"]
    assert "pirate" not in bare and "Ahoy" not in bare


def test_show_returns_the_layers_and_which_template_runs(served: Served) -> None:
    shown = httpx.post(f"{served.url}/api/show", json={"model": "whole"}, timeout=30).json()
    assert "num_predict 3" in shown["parameters"] and 'stop "<zzz>"' in shown["parameters"]
    assert "num_ctx 1024" in shown["parameters"] and "use_mmap" not in shown["parameters"]
    assert shown["system"].startswith("You are a pirate.")
    assert shown["messages"][0] == {"role": "user", "content": "Ahoy?"}
    assert shown["license"] == "Gemma Terms of Use"
    assert shown["template_source"] == "layer"  # the GGUF has none; the layer says Gemma's
    assert "<start_of_turn>" in shown["template"]  # our bundled Jinja of that format
    bare = httpx.post(f"{served.url}/api/show", json={"model": "bare"}, timeout=30).json()
    assert bare["template_source"] == "none" and "system" not in bare
    assert 'SYSTEM """You are a pirate.' in shown["modelfile"]
    assert "MESSAGE assistant" in shown["modelfile"] and "LICENSE" in shown["modelfile"]
    assert "# template: none in the GGUF; the format its Go template" in shown["modelfile"]
    assert "completion" in shown["capabilities"] and "vision" not in shown["capabilities"]
    ps = httpx.get(f"{served.url}/api/ps", timeout=5).json()["models"]
    assert [m["ctx_size"] for m in ps if m["model"].startswith("whole")] == [1024]  # num_ctx


def test_a_hugging_face_name_pulls_through_the_registry_protocol_and_serves(
        served: Served, registry: FakeRegistry) -> None:
    name = "hf.co/bartowski/Tiny-GGUF:Q4_K_M"
    pulled = httpx.post(f"{served.url}/api/pull", timeout=120, json={"model": name,
                                                                    "stream": False})
    assert pulled.status_code == 200, pulled.text
    assert ("GET", "/v2/bartowski/Tiny-GGUF/manifests/Q4_K_M", None) in [
        (method, path, None) for method, path, _ in registry.requests]
    assert name in [m["name"] for m in httpx.get(f"{served.url}/api/tags").json()["models"]]
    assert _chat(served, name, max_tokens=2)["completion_tokens"] == 2


def test_the_cli_show_says_what_the_layers_say(served: Served, root: Path,
                                              registry: FakeRegistry) -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "--config", str(root / "switchboard.yaml"),
         "show", "whole"], capture_output=True, text=True, timeout=60,
        env=environment(SWITCHBOARD_HOME=str(root / "home"), SWITCHBOARD_REGISTRY=registry.host))
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert "num_predict=3" in text and "You are a pirate." in text
    assert "2 before each conversation" in text and "Gemma Terms of Use" in text
    assert "format of its Ollama template layer" in text and "completion" in text
    assert "Traceback" not in shown.stderr
