"""A disk that really fills up, and a store that is read-only: small tmpfs mounts (root only,
as CI runs; elsewhere these tests skip)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.server import environment
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
    home = small_disk / "home"
    home.mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
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

    home = small_disk / "home"
    home.mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
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
