"""Making models on the real runner and model: Ollama's client creates and copies through
/api/create and /api/copy, `switchboard create -f Modelfile` and `cp` work on the same store,
and each made model is served at once, listed, and removable without touching its base."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import ollama
import pytest

from tests.e2e.server import Served, environment, gemma_models, start_server
from tests.fakes.lora import write_lora

pytestmark = pytest.mark.usefixtures("real_variants")
HI = [{"role": "user", "content": "Say hi"}]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("create")


@pytest.fixture(scope="module")
def served(root: Path, gemma_path: Path) -> Iterator[Served]:
    server = start_server(root, gemma_models(gemma_path))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(served: Served) -> Iterator[ollama.Client]:
    with ollama.Client(host=served.url) as started:
        yield started


def _tokens(served: Served, model: str) -> int:
    answer = httpx.post(f"{served.url}/v1/chat/completions", timeout=120,
                        json={"model": model, "messages": HI})
    assert answer.status_code == 200, answer.text
    tokens: int = answer.json()["usage"]["completion_tokens"]
    return tokens


def _cli(root: Path, *argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", "--config",
                           str(root / "switchboard.yaml"), *argv], capture_output=True,
                          text=True, timeout=120, cwd=cwd,
                          env=environment(SWITCHBOARD_HOME=str(root / "home")))


def test_ollamas_client_creates_a_model_that_is_served_and_listed_at_once(
        served: Served, client: ollama.Client) -> None:
    statuses = [p.status for p in client.create(
        model="pirate", from_="gemma3:270m", system="You are a pirate.",
        parameters={"num_predict": 2, "temperature": 0}, stream=True)]
    assert statuses[0] == "reading model metadata" and statuses[-1] == "success"
    assert _tokens(served, "pirate") == 2
    assert "pirate:latest" in [m.model for m in client.list().models]
    shown = client.show("pirate")
    assert 'SYSTEM """You are a pirate."""' in (shown.modelfile or "")
    assert "num_predict 2" in (shown.parameters or "")


def test_a_copy_is_served_and_removing_the_original_leaves_it_whole(
        served: Served, client: ollama.Client) -> None:
    client.create(model="first", from_="gemma3:270m", parameters={"num_predict": 3})
    client.copy("first", "second")
    client.delete("first")
    assert _tokens(served, "second") == 3  # its blobs were the first's too: all still there
    with pytest.raises(ollama.ResponseError) as missing:
        client.copy("first", "third")
    assert missing.value.status_code == 404


def test_a_create_that_cannot_be_made_is_a_clear_error_and_makes_nothing(
        client: ollama.Client) -> None:
    refusals = []
    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: client.create(model="broken", from_="gemma3:270m", quantize="q4_K_M"),
         "quantize is not supported"),
        (lambda: client.create(model="broken", from_="nosuch:1b"),
         "FROM nosuch:1b: no such model or file"),
        (lambda: client.create(model="broken", from_="gemma3:270m",
                               parameters={"temprature": 1}), "unknown option"),
    ]
    for create, says in cases:
        with pytest.raises(ollama.ResponseError) as refused:
            create()
        assert says in refused.value.error, refused.value.error
        refusals.append(refused.value.status_code)
    assert refusals == [400, 404, 400]
    assert "broken:latest" not in [m.model for m in client.list().models]


def test_the_cli_creates_from_a_modelfile_and_copies_on_the_servers_store(
        root: Path, served: Served, tmp_path: Path) -> None:
    (tmp_path / "Modelfile").write_text(
        "FROM gemma3:270m\nPARAMETER num_predict 4\nSYSTEM \"\"\"Answer as a poet.\"\"\"\n")
    made = _cli(root, "create", "poet", "-f", str(tmp_path / "Modelfile"))
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip().splitlines()[-1] == "success"
    assert _tokens(served, "poet") == 4
    copied = _cli(root, "cp", "poet", "poet2")
    assert copied.returncode == 0, copied.stderr
    assert _tokens(served, "poet2") == 4
    (tmp_path / "Bad").write_text("FROM gemma3:270m\nPARAMETR num_predict 4\n")
    bad = _cli(root, "create", "bad", "-f", str(tmp_path / "Bad"))
    assert bad.returncode == 1 and f"{tmp_path / 'Bad'}:2: unknown command 'PARAMETR'" in \
        bad.stderr and "Traceback" not in bad.stderr
    again = _cli(root, "create", "poet", "-f", str(tmp_path / "Modelfile"))
    assert again.returncode == 1 and "already exists" in again.stderr


def test_uploaded_blobs_make_a_model_and_its_adapter_as_ollama_create_does(
        served: Served, client: ollama.Client, gemma_path: Path, tmp_path: Path) -> None:
    digest = client.create_blob(gemma_path)  # POST /api/blobs/<digest>: 253 MB, past the
    adapter = client.create_blob(write_lora(tmp_path / "lora.gguf", gemma_path))  # body limit
    assert httpx.head(f"{served.url}/api/blobs/{digest}", timeout=10).status_code == 200
    client.create(model="uploaded", files={"gemma.gguf": digest},
                  adapters={"lora.gguf": adapter}, parameters={"num_predict": 2})
    assert _tokens(served, "uploaded") == 2
    assert "ADAPTER " in (client.show("uploaded").modelfile or "")
    lie = "sha256:" + "0" * 64
    refused = httpx.post(f"{served.url}/api/blobs/{lie}", content=b"not that", timeout=10)
    assert refused.status_code == 400 and "hashes to sha256:" in refused.json()["error"]
    assert httpx.head(f"{served.url}/api/blobs/{lie}", timeout=10).status_code == 404
    missing = httpx.post(f"{served.url}/api/create", timeout=30, json={
        "model": "nofile", "files": {"x.gguf": lie}, "stream": False})
    assert missing.status_code == 400 and "upload it first" in missing.json()["error"]


def test_a_made_model_is_listed_by_ls(root: Path, client: ollama.Client) -> None:
    client.create(model="listed", from_="gemma3:270m", system="Listed.")
    listed = _cli(root, "ls")
    assert listed.returncode == 0 and "listed:latest" in listed.stdout
