"""Packaging: the wheel carries the payloads and serves from a fresh venv without compiling;
the sdist carries no binary and compiles (here: takes from the build cache) when built."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.server import free_port, wait_until

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("real_variants")


def _checkout(target: Path) -> Path:
    """The tree as a fresh clone that ran `make payloads` has it (built in a copy, so the
    build's own outputs never land in the working tree)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target / name)
    shutil.copytree(REPO / "runner" / "payloads", target / "runner" / "payloads")
    shutil.copytree(REPO / "gateway" / "ui" / "vendor", target / "gateway" / "ui" / "vendor")
    return target


def _build(source: Path, kind: str, out: Path, cache: Path) -> Path:
    subprocess.run([sys.executable, "-m", "build", f"--{kind}", "--no-isolation",
                    "--outdir", str(out)], cwd=source, check=True, capture_output=True,
                   env={"PATH": "/usr/bin:/bin", "HOME": str(source),
                        "SWITCHBOARD_CACHE_DIR": str(cache)}, timeout=300)
    (built,) = out.iterdir()
    return built


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("wheel")
    return _build(_checkout(root / "src"), "wheel", root / "dist", root / "unused-cache")


def test_the_wheel_is_for_this_platform_and_carries_the_payloads(wheel: Path) -> None:
    platform = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    assert wheel.name.endswith(f"-py3-none-{platform}.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.endswith("cpu/llama-server.gz") for n in names)
    assert "runner/templates/gemma.jinja" in names
    console = {"gateway/ui/index.html", "gateway/ui/console.js", "gateway/ui/console.css",
               "gateway/ui/vendor/uPlot.iife.min.js", "gateway/ui/vendor/uPlot.LICENSE"}
    assert console <= set(names)
    assert not (wheel.parent.parent / "unused-cache").exists()


@pytest.fixture(scope="module")
def installed(wheel: Path) -> Iterator[Path]:
    venv = wheel.parent.parent / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                    str(wheel)], check=True, timeout=600)
    yield venv


def test_a_fresh_venv_serves_a_chat_completion_without_compiling(
    installed: Path, tmp_path: Path
) -> None:
    cache, home, tmp = tmp_path / "cache", tmp_path / "home", tmp_path / "tmp"
    tmp.mkdir()
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(installed / "bin" / "switchboard"), "serve", "--port", str(port)],
            cwd=tmp_path,  # no configs/ here: the built-in defaults, as after `pip install`
            env={"PATH": f"{installed / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path),
                 "SWITCHBOARD_HOME": str(home), "SWITCHBOARD_TMPDIR": str(tmp),
                 "SWITCHBOARD_CACHE_DIR": str(cache)},
            stdout=out, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                return httpx.get(f"{url}/health", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        assert wait_until(up, 60), log.read_text()
        reply = httpx.post(f"{url}/v1/chat/completions", timeout=180, json={
            "model": "gemma3:270m", "max_tokens": 4,
            "messages": [{"role": "user", "content": "hi"}]})
        assert reply.status_code == 200, reply.text + log.read_text()
        assert "console.js" in httpx.get(f"{url}/ui/", timeout=10).text  # shipped in the wheel
        (runner,) = [int(p) for p in subprocess.run(
            ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()]
        # The runner is the wheel's payload, extracted under our tmp; nothing was compiled.
        assert Path(f"/proc/{runner}/exe").resolve().is_relative_to(tmp)
        assert not cache.exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def test_the_sdist_carries_no_binary_and_builds_its_payloads(tmp_path: Path) -> None:
    source = _checkout(tmp_path / "src")
    cache = Path.home() / ".cache" / "switchboard"  # warm from `make payloads`: no compile
    sdist = _build(source, "sdist", tmp_path / "sdist", cache)
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
    assert not any("payloads/" in n for n in names) and any(n.endswith("setup.py") for n in names)
    assert not any("ui/vendor/" in n for n in names)  # fetched by its build, like the payloads
    assert any(n.endswith("configs/switchboard.yaml") for n in names)
    unpacked = tmp_path / "unpacked"
    with tarfile.open(sdist) as tar:
        tar.extractall(unpacked, filter="data")
    (tree,) = unpacked.iterdir()
    wheel = _build(tree, "wheel", tmp_path / "dist", cache)
    assert any(n.endswith("cpu/llama-server.gz") for n in zipfile.ZipFile(wheel).namelist())
