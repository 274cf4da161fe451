"""A real NATS server with JetStream on a loopback port, per test, as the fleet tests need.

`make test` installs Debian's nats-server; without it these tests fail saying so, rather than
pass by skipping the fleet."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class NatsServer:
    port: int
    store: Path
    process: subprocess.Popen[bytes] | None = None
    cluster: list[str] | None = None  # extra arguments that join a NATS cluster
    address: str = "127.0.0.1"  # where it listens (a partition test's bridge address)

    @property
    def url(self) -> str:
        return f"nats://{self.address}:{self.port}"

    def start(self) -> None:
        binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
        if not Path(binary).is_file():
            pytest.fail("nats-server is not installed: `make test` installs it "
                        "(apt-get install nats-server)")
        self.process = subprocess.Popen(
            [binary, "-js", "-a", self.address, "-p", str(self.port), "-sd", str(self.store),
             *(self.cluster or [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection((self.address, self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nats-server did not listen on {self.port} within 10 s")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
            self.process = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(free_port(), tmp_path / "jetstream")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[list[NatsServer]]:
    """Three NATS servers routed into one cluster, JetStream replicated across them."""
    routes = [free_port() for _ in range(3)]
    servers = []
    for i, route in enumerate(routes):
        others = ",".join(f"nats://127.0.0.1:{r}" for r in routes if r != route)
        servers.append(NatsServer(free_port(), tmp_path / f"js{i}", cluster=[
            "-n", f"n{i}", "--cluster_name", "sb", "--cluster", f"nats://127.0.0.1:{route}",
            "--routes", others]))
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()
