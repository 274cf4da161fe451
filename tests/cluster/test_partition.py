"""A node cut off from the fleet by a network partition (a network namespace whose only link
is taken down) leaves every other node's view within its TTL, and comes back when the link
does: real `switchboard serve` processes, a real NATS, the kernel's veth pair as the wire."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.cluster.conftest import NatsServer, free_port
from tests.e2e.server import (
    Served,
    environment,
    gemma_models,
    start_server,
    wait_until,
    write_config,
)

TTL = 2.0
HOST_SIDE, NODE_SIDE = "10.231.7.1", "10.231.7.2"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def namespace() -> Iterator[tuple[str, str]]:
    """A network namespace joined to this one by a veth pair: (its name, the host's end)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("a partition needs root and iproute2 (ip netns)")
    name, link = f"sb{os.getpid() % 100000}", f"sbh{os.getpid() % 100000}"
    try:
        _ip("netns", "add", name)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"network namespaces are not allowed here: {exc.stderr.decode().strip()}")
    try:
        _ip("link", "add", link, "type", "veth", "peer", "name", "sbn0", "netns", name)
        _ip("addr", "add", f"{HOST_SIDE}/30", "dev", link)
        _ip("link", "set", link, "up")
        _ip("-n", name, "addr", "add", f"{NODE_SIDE}/30", "dev", "sbn0")
        _ip("-n", name, "link", "set", "sbn0", "up")
        _ip("-n", name, "link", "set", "lo", "up")
        yield name, link
    finally:
        subprocess.run(["ip", "link", "del", link], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


def _names(url: str) -> list[str]:
    return [n["name"] for n in httpx.get(f"{url}/api/nodes", timeout=5).json()["nodes"]]


def test_a_node_cut_off_is_dropped_then_comes_back(
        tmp_path: Path, gemma_path: Path, namespace: tuple[str, str]) -> None:
    netns, link = namespace
    nats = NatsServer(free_port(), tmp_path / "js", address=HOST_SIDE)
    nats.start()
    fleet = {"SWITCHBOARD_CLUSTER": nats.url, "SWITCHBOARD_NODE_TTL": str(TTL),
             "SWITCHBOARD_CLUSTER_KEY": "partition-key"}
    a: Served | None = None
    cut_off: subprocess.Popen[bytes] | None = None
    try:
        a = start_server(tmp_path / "a", gemma_models(gemma_path),
                         {**fleet, "SWITCHBOARD_NODE_NAME": "a"})
        root = tmp_path / "b"
        (root / "tmp").mkdir(parents=True)
        config = write_config(root / "switchboard.yaml", gemma_models(gemma_path))
        port = free_port()
        with (root / "server.log").open("wb") as out:
            cut_off = subprocess.Popen(
                ["ip", "netns", "exec", netns, sys.executable, "-m", "gateway.cli", "--config",
                 str(config), "serve", "--host", NODE_SIDE, "--port", str(port), "--insecure"],
                stdout=out, stderr=subprocess.STDOUT, env=environment(
                    **fleet, SWITCHBOARD_NODE_NAME="b", SWITCHBOARD_HOME=str(root / "home"),
                    SWITCHBOARD_TMPDIR=str(root / "tmp")))
        assert wait_until(lambda: _names(a.url) == ["a", "b"], 30), (
            root / "server.log").read_text()
        listed = httpx.get(f"{a.url}/api/nodes", timeout=5).json()["nodes"][1]
        assert listed["url"] == f"http://{NODE_SIDE}:{port}"  # reachable only over the link

        _ip("link", "set", link, "down")  # the partition: b still runs, and sees nobody
        cut_at = time.monotonic()
        assert wait_until(lambda: _names(a.url) == ["a"], TTL * 4)
        assert time.monotonic() - cut_at < TTL * 2 + 2
        assert cut_off.poll() is None

        _ip("link", "set", link, "up")
        healed_at = time.monotonic()
        assert wait_until(lambda: _names(a.url) == ["a", "b"], 30), (
            root / "server.log").read_text()[-2000:]
        back = time.monotonic() - healed_at
        log = (root / "server.log").read_text()
        assert "rejoined" in log or back < TTL, log[-2000:]
    finally:
        if cut_off is not None:
            cut_off.terminate()
            cut_off.wait(20)
        if a is not None:
            a.stop()
        nats.stop()
