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


@pytest.mark.parametrize(("capability", "chosen"), [
    ("nvidia-cuda-12", "for-cuda12"), ("nvidia-cuda-13", "for-cuda13"), ("amd", "for-amd"),
    ("intel", "for-cpu"), ("metal", "for-cpu"), ("default", "for-cpu"),
])
def test_cli_installs_the_meta_target_for_the_forced_capability(
    capability: str, chosen: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    build = tmp_path / "build"
    build.mkdir()
    (build / "run.sh").write_text("#!/bin/sh\n")
    names = ("for-cuda12", "for-cuda13", "for-amd", "for-cpu")
    gallery = tmp_path / "gallery.yaml"
    gallery.write_text(
        "- name: best\n  capabilities: {nvidia-cuda-12: for-cuda12, nvidia-cuda-13: for-cuda13,"
        " amd: for-amd, default: for-cpu}\n"
        + "".join(f"- {{name: {name}, uri: build}}\n" for name in names)
    )
    monkeypatch.setenv("SWITCHBOARD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SWITCHBOARD_GALLERIES", str(gallery))
    monkeypatch.setenv("SWITCHBOARD_FORCE_CAPABILITY", capability)
    assert cli.main(["backends", "install", "best"]) == 0
    installed = sorted(p.name for p in (tmp_path / "home" / "backends").iterdir())
    assert installed == sorted(["best", chosen])
    assert cli.main(["backends", "ls", "--available"]) == 0
    assert f"meta -> {chosen}" in capsys.readouterr().out
    assert cli.main(["backends", "rm", "best"]) == 0
    assert list((tmp_path / "home" / "backends").iterdir()) == []


def test_cli_serve_on_a_taken_port_says_so_in_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    monkeypatch.setenv("SWITCHBOARD_HOME", str(tmp_path))
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert cli.main(["serve", "--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.glob("**/switchboard.pid"))  # nothing was started


def test_api_pull_hosts_beyond_the_registry_need_the_operators_allow_list(
    tmp_path: Path,
) -> None:
    from runner.service import LocalModelService, PullRefusedError
    from runner.settings import Settings

    def service(*allowed: str) -> LocalModelService:
        return LocalModelService(Settings(home=tmp_path, registry="registry.example",
                                          pull_allowed_hosts=allowed))

    service().pull("registry.example/library/m:1")  # the registry itself: always
    with pytest.raises(PullRefusedError, match="not allowed"):
        service().pull("mirror.example/library/m:1")
    service("*.example").pull(url="https://mirror.example/m.gguf", sha256="0" * 64)
    with pytest.raises(PullRefusedError):
        service("*.example").pull(url="http://10.0.0.1:80/m.gguf", sha256="0" * 64)
