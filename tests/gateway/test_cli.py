from __future__ import annotations

from pathlib import Path

import pytest

from gateway import cli
from tests.fakes.registry import FakeRegistry


@pytest.mark.parametrize(
    "argv",
    [["--config", "x.yaml", "serve"], ["serve", "--config", "x.yaml"],
     ["--config", "x.yaml", "serve", "--port", "9"]],
)
def test_cli_config_option_works_before_or_after_the_command(argv: list[str]) -> None:
    assert cli.build_parser().parse_args(argv).config == Path("x.yaml")


def test_cli_serve_without_config_keeps_none() -> None:
    args = cli.build_parser().parse_args(["serve", "--port", "9"])
    assert args.config is None and args.port == 9


def test_cli_pull_unknown_model_fails_cleanly(
    capsys: pytest.CaptureFixture[str], registry: FakeRegistry, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SWITCHBOARD_HOME", str(tmp_path))
    assert cli.main(["pull", f"{registry.host}/no-such-model", "--insecure"]) == 1
    assert "not found" in capsys.readouterr().err


def test_cli_pull_url_requires_its_digest(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["pull", "https://example.com/x.gguf"]) == 2
    assert "--sha256" in capsys.readouterr().err


def test_cli_config_lists_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["config"]) == 0
    out = capsys.readouterr().out
    for name in ("SWITCHBOARD_KEEP_ALIVE", "SWITCHBOARD_TMPDIR", "SWITCHBOARD_LLM_LIBRARY"):
        assert name in out
