"""The CLI as a client of a running server, and as a new user first meets it: a server's or
a user's mistake is one line and exit status 1, never a traceback; the client verbs take
their own URL and key; the config is found wherever the command runs from."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.server import (
    Served,
    environment,
    gemma_models,
    start_server,
    wait_until,
    write_config,
)

KEY = "sk-cli-client"
pytestmark = pytest.mark.usefixtures("real_variants")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, gemma_path: Path) -> Iterator[Served]:
    server = start_server(tmp_path_factory.mktemp("cli"), gemma_models(gemma_path),
                          {"SWITCHBOARD_API_KEYS": KEY})
    yield server
    server.stop()


def _cli(*argv: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *argv], capture_output=True,
                          text=True, timeout=60, cwd=cwd, env=environment(**env))


def test_stop_of_an_unknown_model_says_so_in_one_line(served: Served) -> None:
    # Before: `TypeError: string indices must be integers` (Ollama's error shape on /api).
    stopped = _cli("stop", "nosuch:1b", "--url", served.url, SWITCHBOARD_API_KEY=KEY)
    assert stopped.returncode == 1 and "Traceback" not in stopped.stderr
    assert stopped.stderr.strip() == "stop: model 'nosuch:1b' not found"


def test_ps_takes_its_own_url_and_key_and_says_a_refusal_plainly(served: Served) -> None:
    refused = _cli("ps", "--url", served.url)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.startswith("ps: missing or invalid API key")
    listed = _cli("ps", SWITCHBOARD_URL=served.url, SWITCHBOARD_API_KEY=KEY)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split()[0] == "MODEL"


def test_a_server_that_is_not_there_is_one_line(tmp_path: Path) -> None:
    gone = _cli("ps", "--url", "http://127.0.0.1:9")
    assert gone.returncode == 1 and gone.stderr.startswith("ps: cannot reach switchboard")


def test_the_config_in_switchboard_home_is_found_from_any_directory(
        tmp_path: Path, gemma_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    write_config(home / "switchboard.yaml", {"homed": {"source": str(gemma_path)}})
    listed = _cli("ls", cwd=Path("/"), SWITCHBOARD_HOME=str(home))
    assert listed.returncode == 0, listed.stderr
    assert "homed" in listed.stdout  # before: only ./configs/switchboard.yaml was looked for
    aliased = _cli("list", cwd=Path("/"), SWITCHBOARD_HOME=str(home))
    assert aliased.stdout == listed.stdout


def test_version_help_and_a_bad_name_read_as_a_user_expects(tmp_path: Path) -> None:
    shown = _cli("--version")
    assert shown.returncode == 0 and shown.stdout.startswith("switchboard ")
    helped = _cli("--help")
    assert "``" not in helped.stdout and "llama-server" in helped.stdout
    bad = _cli("pull", "Bad Name!!", SWITCHBOARD_HOME=str(tmp_path))
    assert bad.returncode == 1 and bad.stderr.count("Bad Name!!") == 1, bad.stderr


def test_the_root_answers_as_ollamas_does_and_the_console_has_an_icon(served: Served) -> None:
    root = httpx.get(f"{served.url}/", timeout=10)
    assert root.status_code == 200 and root.text == "switchboard is running"
    icon = httpx.get(f"{served.url}/favicon.ico", timeout=10)
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
    assert 'rel="icon"' in httpx.get(f"{served.url}/ui/", timeout=10).text


def test_preloaded_models_are_loaded_before_any_request(tmp_path: Path,
                                                        gemma_path: Path) -> None:
    server = start_server(tmp_path, gemma_models(gemma_path),
                          {"SWITCHBOARD_PRELOAD": "gemma,nosuch:1b"})
    try:
        def loaded() -> list[str]:
            return [m["name"] for m in httpx.get(f"{server.url}/api/ps", timeout=5).json()[
                "models"]]

        assert wait_until(lambda: loaded() == ["gemma3:270m"], 30), loaded()
        log = server.log_text()
        assert "preload: model 'nosuch:1b' not found" in log and "Traceback" not in log
    finally:
        server.stop()
