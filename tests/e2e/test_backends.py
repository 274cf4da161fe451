"""An installed backend serving a model: a directory backend whose run.sh wraps the payload
llama-server, installed with `switchboard backends install` from a gallery file."""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from runner.payloads import packaged_variants
from runner.variants import order_variants, read_cpu_flags
from tests.e2e.server import environment, start_server

pytestmark = pytest.mark.usefixtures("real_variants")


def test_a_model_on_an_installed_backend_serves_a_chat_completion(
    tmp_path: Path, gemma_path: Path
) -> None:
    variants = packaged_variants()
    best = order_variants(variants, read_cpu_flags())[0]
    build = tmp_path / "gallery" / "wrapped"
    build.mkdir(parents=True)
    binary = tmp_path / "llama-server"
    with gzip.open(variants[best]) as packed, binary.open("wb") as out:
        shutil.copyfileobj(packed, out)
    binary.chmod(0o755)
    marker = tmp_path / "launched"
    (build / "run.sh").write_text(
        f'#!/bin/sh\necho "$@" >> {marker}\nexec {binary} "$@"\n'
    )
    gallery = tmp_path / "gallery" / "gallery.yaml"
    gallery.write_text("- {name: wrapped, alias: mine, uri: wrapped}\n")
    home = tmp_path / "home"
    env = environment(SWITCHBOARD_HOME=str(home), SWITCHBOARD_GALLERIES=str(gallery))
    installed = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "backends", "install", "mine"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert installed.returncode == 0, installed.stderr
    listed = subprocess.run([sys.executable, "-m", "gateway.cli", "backends", "ls"], env=env,
                            capture_output=True, text=True, timeout=60).stdout
    assert "wrapped" in listed and "installed" in listed and "embedded" in listed

    models = {"wrapped-gemma": {"source": str(gemma_path), "backend": "mine",
                                "ctx_size": 2048, "chat_template": "gemma"}}
    served = start_server(tmp_path / "serve", models, {"SWITCHBOARD_HOME": str(home)})
    try:
        reply = httpx.post(f"{served.url}/v1/chat/completions", timeout=120, json={
            "model": "wrapped-gemma", "max_tokens": 4,
            "messages": [{"role": "user", "content": "hi"}],
        })
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["content"] is not None
        (runner,) = httpx.get(f"{served.url}/api/ps").json()["models"]
        assert runner["variant"] == "wrapped"
        assert "--port" in marker.read_text() and "--alias wrapped-gemma" in marker.read_text()
    finally:
        served.stop()


def test_a_model_on_a_missing_backend_fails_with_how_to_install_it(
    tmp_path: Path, gemma_path: Path
) -> None:
    models = {"orphan": {"source": str(gemma_path), "backend": "not-installed"}}
    served = start_server(tmp_path, models)
    try:
        reply = httpx.post(f"{served.url}/v1/chat/completions", timeout=60, json={
            "model": "orphan", "messages": [{"role": "user", "content": "hi"}]})
        assert reply.status_code == 503
        assert "backends install not-installed" in reply.json()["error"]["message"]
    finally:
        served.stop()
