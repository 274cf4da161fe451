"""Every file in configs/ loads; the commented defaults match the settings module."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.generated_docs import model_keys_yaml, settings_yaml
from runner.gallery import parse
from runner.settings import ModelConfig, Settings, load_settings

CONFIGS = Path(__file__).parent.parent / "configs"
SETTINGS_FILES = sorted(p for p in CONFIGS.rglob("*.yaml") if p.name != "gallery.yaml")


@pytest.mark.parametrize("path", SETTINGS_FILES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_config_file_loads(path: Path) -> None:
    settings = load_settings(path, environ={})
    assert settings.models, f"{path} defines no model"


def test_the_shipped_gallery_parses_and_its_directories_exist() -> None:
    gallery = CONFIGS / "gallery.yaml"
    entries = parse(gallery.read_text(), str(gallery))
    assert entries
    for entry in entries:
        for location in entry.locations():
            assert Path(location).is_dir(), location


def test_the_config_file_shows_every_setting_at_its_default() -> None:
    text = (CONFIGS / "switchboard.yaml").read_text()
    begin = text.index("# --- settings")
    block = text[text.index("\n", begin) + 1 : text.index("# --- end of settings ---")]
    assert block.strip() == settings_yaml().strip(), (
        "configs/switchboard.yaml is stale: paste `switchboard config --yaml` between the markers"
    )
    assert model_keys_yaml() in text
    assert set(Settings.model_fields) - {"models"} <= {
        line.split(":")[0].lstrip("# ") for line in block.splitlines()
    }
    assert all(f"#   {key}:" in text for key in ModelConfig.model_fields)


def test_a_broken_config_stops_the_server_before_it_listens(tmp_path: Path) -> None:
    config = tmp_path / "switchboard.yaml"
    config.write_text("models:\n  tiny:\n    source: x.gguf\n    ctx_size: -5\n")
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "--config", str(config), "serve", "--port", "9"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert f"{config}:4: models.tiny.ctx_size: Input should be greater than or equal to 0" \
        in result.stderr
    assert "Traceback" not in result.stderr
