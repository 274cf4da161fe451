"""`switchboard show` says where a model came from and the context it runs with: a model
pulled by URL shows that URL, not the store name it was given, and a configured model its
configured context (and each request's share of it), not only the GGUF's own."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import cli
from tests.fakes.registry import FakeRegistry, file_sha256


def test_show_of_a_model_pulled_by_url_names_the_url(
        capsys: pytest.CaptureFixture[str], registry: FakeRegistry, gemma_path: Path,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWITCHBOARD_HOME", str(tmp_path))
    url = registry.add_file("Gemma-Tiny.gguf", gemma_path)
    assert cli.main(["pull", url, "--sha256", file_sha256(gemma_path), "--name", "mine"]) == 0
    capsys.readouterr()
    assert cli.main(["show", "mine"]) == 0
    source = next(line for line in capsys.readouterr().out.splitlines()
                  if line.strip().startswith("source"))
    assert url in source and "stored as mine:latest" in source
    assert "registry" not in source


def test_show_of_a_configured_model_gives_its_configured_context(
        capsys: pytest.CaptureFixture[str], gemma_path: Path, tmp_path: Path) -> None:
    config = tmp_path / "switchboard.yaml"
    config.write_text(f"home: {tmp_path / 'home'}\nmodels:\n  small:\n"
                      f"    source: {gemma_path}\n    ctx_size: 2048\n    parallel: 2\n")
    assert cli.main(["--config", str(config), "show", "small"]) == 0
    context = next(line for line in capsys.readouterr().out.splitlines()
                   if "context length" in line)
    assert "2048 tokens per runner" in context and "1024 per request (2 slots)" in context
    assert "trained on 32768" in context
