"""The model store end to end: `switchboard pull` and /api/pull against a registry on
127.0.0.1 serving the real Gemma GGUF, then the real runner serving the pulled name."""

from __future__ import annotations

import concurrent.futures
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import orjson
import pytest

from tests.e2e.server import Served, environment, gemma_models, start_server, wait_until
from tests.fakes.registry import MODEL, FakeRegistry, checkpointed, file_sha256

pytestmark = pytest.mark.usefixtures("real_variants")


@pytest.fixture(scope="module")
def gemma_registry(gemma_path: Path) -> Iterator[FakeRegistry]:
    with FakeRegistry() as registry:
        registry.add_model("library/tiny", "latest", [(MODEL, registry.add_blob(gemma_path))])
        yield registry


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def _env(home: Path, registry: FakeRegistry) -> dict[str, str]:
    return environment(SWITCHBOARD_HOME=str(home), SWITCHBOARD_REGISTRY=registry.host,
                       SWITCHBOARD_LOG_LEVEL="warning")


def _cli(home: Path, registry: FakeRegistry, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *argv], env=_env(home, registry),
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def served(tmp_path: Path, home: Path, gemma_registry: FakeRegistry,
           gemma_path: Path) -> Iterator[Served]:
    server = start_server(tmp_path, gemma_models(gemma_path), {
        "SWITCHBOARD_HOME": str(home), "SWITCHBOARD_REGISTRY": gemma_registry.host,
    })
    yield server
    server.stop()


def test_pulled_model_is_served_by_name_at_once_and_removable_once_idle(
    served: Served, home: Path, gemma_registry: FakeRegistry
) -> None:
    pulled = _cli(home, gemma_registry, "pull", "tiny", "--insecure")
    assert pulled.returncode == 0, pulled.stderr
    assert "pulled tiny:latest" in pulled.stdout

    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="x", max_retries=0, timeout=120)
    assert "tiny:latest" in [m.id for m in client.models.list()]
    reply = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert reply.choices[0].message.content is not None and reply.usage is not None

    listed = _cli(home, gemma_registry, "ls")
    assert "tiny:latest" in listed.stdout and "253.1 MB" in listed.stdout
    shown = _cli(home, gemma_registry, "show", "tiny")
    for expected in ("gemma3", "268.10M", "Q4_K_M", "32768", "none in the GGUF"):
        assert expected in shown.stdout, shown.stdout

    refused = _cli(home, gemma_registry, "rm", "tiny")
    assert refused.returncode == 1 and "in use" in refused.stderr
    assert httpx.post(f"{served.url}/api/unload", json={"model": "tiny"}).json()["unloaded"]
    removed = _cli(home, gemma_registry, "rm", "tiny")
    assert removed.returncode == 0, removed.stderr
    assert list((home / "models" / "blobs").iterdir()) == []
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )


def test_a_killed_pull_resumes_and_verifies(
    home: Path, gemma_registry: FakeRegistry, gemma_path: Path
) -> None:
    size = gemma_path.stat().st_size
    gemma_registry.rate = 80e6  # about 3 s for the whole file, so "half way" can be hit
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "pull", "tiny", "--insecure"],
        env=_env(home, gemma_registry), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    partial = home / "models" / "partial"
    try:
        assert wait_until(lambda: checkpointed(partial) >= size // 2, 60)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        gemma_registry.rate = None
    kept = checkpointed(partial)
    assert size // 2 <= kept < size

    gemma_registry.requests.clear()
    again = _cli(home, gemma_registry, "pull", "tiny", "--insecure")
    assert again.returncode == 0, again.stderr
    assert gemma_registry.ranged_bytes() < size - kept + size // 16
    blob = home / "models" / "blobs" / f"sha256-{file_sha256(gemma_path)}"
    assert file_sha256(blob) == file_sha256(gemma_path)
    assert list(partial.iterdir()) == []


def _pull_stream(served: Served, body: dict[str, object]) -> list[dict[str, object]]:
    with httpx.stream("POST", f"{served.url}/api/pull", json=body, timeout=120) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/x-ndjson"
        return [orjson.loads(line) for line in response.iter_lines() if line]


def test_concurrent_api_pulls_share_one_download(
    served: Served, gemma_registry: FakeRegistry, gemma_path: Path
) -> None:
    size = gemma_path.stat().st_size
    gemma_registry.rate = 120e6
    gemma_registry.bytes_sent = 0
    body = {"model": "tiny", "insecure": True}
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            streams = list(pool.map(lambda _: _pull_stream(served, body), range(2)))
    finally:
        gemma_registry.rate = None
    for lines in streams:
        assert lines[0] == {"status": "pulling manifest"}
        assert lines[-1] == {"status": "success"}
        progress = [line for line in lines if "completed" in line]
        assert any(0 < int(str(p["completed"])) < size for p in progress)
        assert progress[-1]["completed"] == progress[-1]["total"] == size
    assert gemma_registry.bytes_sent < size * 1.5  # one download, not two


def test_api_pull_errors(served: Served, gemma_registry: FakeRegistry) -> None:
    bad = httpx.post(f"{served.url}/api/pull", json={"model": "../../etc/passwd"})
    assert bad.status_code == 400 and "invalid" in bad.json()["error"]  # Ollama's shape
    missing = _pull_stream(served, {"model": "nope", "insecure": True})
    assert missing[-1].keys() == {"error"} and "not found" in str(missing[-1]["error"])
    unstreamed = httpx.post(f"{served.url}/api/pull",
                            json={"model": "nope", "insecure": True, "stream": False})
    assert unstreamed.status_code == 404
    assert "not found" in unstreamed.json()["error"]


def test_a_client_leaving_api_pull_stops_the_download_and_keeps_the_partial(
    served: Served, home: Path, gemma_registry: FakeRegistry, gemma_path: Path
) -> None:
    size = gemma_path.stat().st_size
    gemma_registry.rate = 60e6
    gemma_registry.bytes_sent = 0
    partial = home / "models" / "partial"
    try:
        with httpx.stream("POST", f"{served.url}/api/pull", timeout=60,
                          json={"model": "tiny", "insecure": True}) as response:
            for line in response.iter_lines():
                if line and int(orjson.loads(line).get("completed", 0)) > size // 4:
                    break  # and hang up
        # With its only client gone, the server stops fetching: the bytes sent stop growing.
        assert wait_until(lambda: any(partial.glob("*.json")), 10)
        samples = [-1]

        def settled() -> bool:
            samples.append(gemma_registry.bytes_sent)
            return samples[-1] == samples[-2]

        assert wait_until(settled, 10, step=0.5)
        assert samples[-1] < size * 0.8
    finally:
        gemma_registry.rate = None
    gemma_registry.requests.clear()
    again = _cli(home, gemma_registry, "pull", "tiny", "--insecure")
    assert again.returncode == 0, again.stderr
    assert gemma_registry.ranged_bytes() < size * 0.8  # it resumed from the server's partial
