from __future__ import annotations

import re
from pathlib import Path

import pytest

from runner.settings import SettingsError, child_environment, load_settings, parse_duration

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [("5m", 300.0), ("1h30m", 5400.0), ("250ms", 0.25), ("10", 10.0), (0, 0.0), ("-1", -1.0),
     (-1, -1.0), ("-5m", -300.0), (2.5, 2.5)],
)
def test_parse_duration_accepts_go_durations_and_seconds(raw: object, seconds: float) -> None:
    assert parse_duration(raw) == seconds


@pytest.mark.parametrize("raw", ["", "5 minutes", "m5", "5x", True, None, [1]])
def test_parse_duration_rejects_garbage(raw: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(raw)


def test_load_settings_precedence_is_file_then_env_then_overrides(tmp_path: Path) -> None:
    config = tmp_path / "s.yaml"
    config.write_text("port: 9000\nkeep_alive: 1m\nmax_queue: 7\n")
    env = {"SWITCHBOARD_PORT": "9100", "SWITCHBOARD_KEEP_ALIVE": "2m", "UNRELATED": "x"}
    settings = load_settings(config, environ=env, port=9200)
    assert settings.port == 9200
    assert settings.keep_alive == 120.0
    assert settings.max_queue == 7


def test_load_settings_config_path_from_env(tmp_path: Path) -> None:
    config = tmp_path / "s.yaml"
    config.write_text("max_queue: 3\n")
    assert load_settings(environ={"SWITCHBOARD_CONFIG": str(config)}).max_queue == 3


def test_load_settings_reports_bad_values_clearly(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="SWITCHBOARD_MAX_QUEUE='lots': Input should be"):
        load_settings(environ={"SWITCHBOARD_MAX_QUEUE": "lots"})
    with pytest.raises(SettingsError, match="command line port: Input should be"):
        load_settings(environ={}, port=99999)
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(SettingsError, match="mapping"):
        load_settings(bad, environ={})


def test_a_broken_config_names_the_file_line_and_key(tmp_path: Path) -> None:
    config = tmp_path / "switchboard.yaml"
    config.write_text(
        "host: 127.0.0.1\n"
        "keep_alive: soon\n"
        "models:\n"
        "  tiny:\n"
        "    source: x.gguf\n"
        "    ctx_size: lots\n"
        "    chat_template: no-such-template\n"
        "  typo:\n"
        "    sorce: y.gguf\n"
    )
    with pytest.raises(SettingsError) as caught:
        load_settings(config, environ={})
    message = str(caught.value)
    for expected in (f"{config}:2: keep_alive: Value error, not a duration",
                     f"{config}:6: models.tiny.ctx_size: Input should be a valid integer",
                     f"{config}:7: models.tiny.chat_template: Value error, chat template",
                     f"{config}:9: models.typo.sorce: unknown setting",
                     f"{config}:8: models.typo.source: Field required"):
        assert expected in message, message


def test_yaml_syntax_errors_name_the_line(tmp_path: Path) -> None:
    config = tmp_path / "switchboard.yaml"
    config.write_text("port: 8080\nmodels:\n  a: [1,\n")
    with pytest.raises(SettingsError, match=rf"{config}:4: not valid YAML"):
        load_settings(config, environ={})


def test_load_settings_api_keys_split_on_commas() -> None:
    settings = load_settings(environ={"SWITCHBOARD_API_KEYS": "a, b,,c"})
    assert settings.api_keys == ("a", "b", "c")


def test_child_environment_drops_llama_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLAMA_ARG_CTX_SIZE", "1")
    monkeypatch.setenv("LLAMA_API_KEY", "leaked")
    monkeypatch.setenv("KEEP_ME", "1")
    env = child_environment()
    assert "LLAMA_ARG_CTX_SIZE" not in env and "LLAMA_API_KEY" not in env
    assert env["KEEP_ME"] == "1"


def test_only_the_settings_module_reads_the_environment() -> None:
    pattern = re.compile(r"os\.environ|os\.getenv|getenv\(")
    offenders = [
        str(path.relative_to(ROOT))
        for package in ("gateway", "runner")
        for path in (ROOT / package).rglob("*.py")
        if path.name != "settings.py" and pattern.search(path.read_text())
    ]
    assert offenders == []


def test_api_keys_file_adds_keys_skipping_comments(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# team\nk-file\n\n  k-two  \n")
    settings = load_settings(environ={"SWITCHBOARD_API_KEYS": "k-env",
                                      "SWITCHBOARD_API_KEYS_FILE": str(keys)})
    assert settings.api_keys == ("k-env", "k-file", "k-two")
    with pytest.raises(SettingsError, match="api_keys_file"):
        load_settings(environ={"SWITCHBOARD_API_KEYS_FILE": str(tmp_path / "missing")})


def test_resolve_template_bundled_or_file(tmp_path: Path) -> None:
    from runner.errors import ModelSourceError
    from runner.model_source import resolve_template

    assert resolve_template("gemma").name == "gemma.jinja"
    mine = tmp_path / "mine.jinja"
    mine.write_text("{{ messages }}")
    assert resolve_template(str(mine)) == mine
    with pytest.raises(ModelSourceError, match="gemma"):
        resolve_template("no-such-template")


def test_a_models_options_are_ollamas_names_checked_when_the_config_loads(tmp_path: Path) -> None:
    config = tmp_path / "switchboard.yaml"
    config.write_text(
        "models:\n"
        "  tiny:\n"
        "    source: x.gguf\n"
        "    options: {num_predict: 3, temprature: 0.5}\n"
        "  fine:\n"
        "    source: x.gguf\n"
        "    options: {num_ctx: 1024, stop: '<end>', top_k: 20}\n"
    )
    with pytest.raises(SettingsError) as caught:
        load_settings(config, environ={})
    assert "models.tiny.options: Value error, unknown option 'temprature'" in str(caught.value)
    config.write_text(config.read_text().replace("temprature", "temperature"))
    fine = load_settings(config, environ={}).models["fine"]
    assert fine.ctx_size == 1024 and fine.options["stop"] == ["<end>"]  # num_ctx is the context


def test_a_registry_mirror_must_be_a_host_and_a_url() -> None:
    with pytest.raises(SettingsError, match=r"'hf\.co' is not HOST=http"):
        load_settings(None, environ={"SWITCHBOARD_REGISTRY_MIRRORS": "hf.co"})
    mirrored = load_settings(None, environ={
        "SWITCHBOARD_REGISTRY_MIRRORS": "hf.co=http://10.0.0.5:5000,registry.ollama.ai=https://m"})
    assert mirrored.registry_mirrors == ("hf.co=http://10.0.0.5:5000",
                                         "registry.ollama.ai=https://m")


def test_the_config_file_is_looked_for_in_order_not_only_in_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from runner.settings import config_path

    monkeypatch.chdir(tmp_path)
    home = tmp_path / "home"
    env = {"SWITCHBOARD_HOME": str(home)}
    assert config_path(None, env) is None or config_path(None, env) == (
        Path.home() / ".config" / "switchboard" / "switchboard.yaml")
    home.mkdir()
    (home / "switchboard.yaml").write_text("port: 9001\n")
    assert config_path(None, env) == home / "switchboard.yaml"
    assert load_settings(None, environ=env).port == 9001
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "switchboard.yaml").write_text("port: 9002\n")
    assert load_settings(None, environ=env).port == 9002  # ./configs first
    named = tmp_path / "named.yaml"
    named.write_text("port: 9003\n")
    assert load_settings(None, environ={**env, "SWITCHBOARD_CONFIG": str(named)}).port == 9003
    assert load_settings(named, environ=env).port == 9003
    with pytest.raises(SettingsError, match="cannot read config"):
        load_settings(None, environ={**env, "SWITCHBOARD_CONFIG": str(tmp_path / "gone.yaml")})
