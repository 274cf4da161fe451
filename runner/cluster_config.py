"""The fleet settings checked together: which NATS server, this node's name, the URL other
nodes reach it by, and the key node-to-node requests carry. Refused at start, in one line
each, rather than when the first request crosses nodes."""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from runner.settings import Settings, SettingsError

# A JetStream KV key, and short enough to read in `switchboard nodes`.
_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_WILDCARD_HOSTS = {"0.0.0.0", "::", ""}


@dataclass(frozen=True)
class ClusterConfig:
    nats_url: str  # one URL, or several joined by commas (servers of one NATS cluster)
    node: str
    advertise_url: str
    key: str | None
    replicas: int = 1  # of the fleet's JetStream buckets

    @property
    def servers(self) -> list[str]:
        """The NATS servers to try, in order: any one lets the node join."""
        return [url.strip() for url in self.nats_url.split(",") if url.strip()]

    @property
    def redacted(self) -> str:
        """The URLs as the log may show them: passwords replaced."""
        shown = []
        for url in self.servers:
            scheme, _, rest = url.partition("://")
            shown.append(f"{scheme}://***@{rest.rsplit('@', 1)[1]}" if "@" in rest else url)
        return ",".join(shown)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cluster_config(settings: Settings) -> ClusterConfig | None:
    """The fleet this node joins, or None when it serves alone (no ``cluster`` set)."""
    if not settings.cluster:
        return None
    for url in settings.cluster.split(","):
        parts = urlsplit(url.strip())
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.scheme not in ("nats", "tls") or not parts.hostname or port is None:
            raise SettingsError(f"cluster: {url.strip()!r} is not nats://[user:password@]"
                                "HOST:PORT, or several joined by commas (SWITCHBOARD_CLUSTER "
                                "or --cluster)")
    node = settings.node_name or socket.gethostname().split(".")[0]
    if not _NODE_NAME.fullmatch(node):
        raise SettingsError(f"node_name: {node!r} must be letters, digits, '.', '_' or '-' "
                            "(at most 63), starting with a letter or digit "
                            "(SWITCHBOARD_NODE_NAME)")
    advertise = settings.advertise_url
    if advertise is None:
        if settings.host in _WILDCARD_HOSTS or settings.port == 0:
            raise SettingsError(
                f"advertise_url: listening on {settings.host}:{settings.port} says nothing "
                "other nodes can reach: set SWITCHBOARD_ADVERTISE_URL (e.g. "
                "http://10.0.0.5:8080)")
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        advertise = f"http://{host}:{settings.port}"
    else:
        target = urlsplit(advertise)
        if target.scheme != "http" or not target.hostname \
                or target.hostname in _WILDCARD_HOSTS:
            raise SettingsError(f"advertise_url: {advertise!r} is not an http:// URL other "
                                "nodes can reach (SWITCHBOARD_ADVERTISE_URL)")
        advertise = advertise.rstrip("/")
    if not settings.cluster_key and not is_loopback(settings.host):
        raise SettingsError(
            f"cluster_key: a node listening on {settings.host} joins a fleet only with a "
            "shared key, or anyone who reaches its port could pose as a node: set "
            "SWITCHBOARD_CLUSTER_KEY on every node")
    return ClusterConfig(settings.cluster, node, advertise, settings.cluster_key or None,
                         settings.cluster_replicas)
