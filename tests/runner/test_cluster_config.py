"""The fleet settings are checked together at start, each refusal one line naming its knob."""

from __future__ import annotations

import pytest

from runner.cluster_config import cluster_config
from runner.settings import Settings, SettingsError


def test_no_cluster_means_this_node_alone() -> None:
    assert cluster_config(Settings()) is None


def test_defaults_come_from_the_listening_address_and_the_host_name() -> None:
    config = cluster_config(Settings(cluster="nats://u:p@127.0.0.1:4222", port=9000))
    assert config is not None
    assert config.advertise_url == "http://127.0.0.1:9000"
    assert config.nats_url == "nats://u:p@127.0.0.1:4222"
    assert config.node and config.key is None  # loopback: a key is not required


@pytest.mark.parametrize("url", ["127.0.0.1:4222", "http://x:4222", "nats://x", "nats://:4222",
                                 "nats://x:port", "nats://a:4222,nats://b"])
def test_a_cluster_url_that_is_not_nats_host_port_is_refused(url: str) -> None:
    with pytest.raises(SettingsError, match="SWITCHBOARD_CLUSTER"):
        cluster_config(Settings(cluster=url))


def test_several_nats_servers_may_be_named_and_passwords_never_reach_the_log() -> None:
    config = cluster_config(Settings(cluster="nats://u:pw@n1:4222, nats://n2:4222"))
    assert config is not None
    assert config.servers == ["nats://u:pw@n1:4222", "nats://n2:4222"]
    assert config.redacted == "nats://***@n1:4222,nats://n2:4222"


def test_a_wildcard_listener_needs_an_advertised_url() -> None:
    with pytest.raises(SettingsError, match="SWITCHBOARD_ADVERTISE_URL"):
        cluster_config(Settings(cluster="nats://n:4222", host="0.0.0.0", cluster_key="k"))
    config = cluster_config(Settings(cluster="nats://n:4222", host="0.0.0.0", cluster_key="k",
                                     advertise_url="http://10.0.0.5:8080/"))
    assert config is not None and config.advertise_url == "http://10.0.0.5:8080"


@pytest.mark.parametrize("url", ["10.0.0.5:8080", "ftp://10.0.0.5", "http://0.0.0.0:8080"])
def test_an_advertised_url_others_cannot_reach_is_refused(url: str) -> None:
    with pytest.raises(SettingsError, match="SWITCHBOARD_ADVERTISE_URL"):
        cluster_config(Settings(cluster="nats://n:4222", advertise_url=url))


def test_beyond_loopback_a_node_joins_only_with_a_key() -> None:
    with pytest.raises(SettingsError, match="SWITCHBOARD_CLUSTER_KEY"):
        cluster_config(Settings(cluster="nats://n:4222", host="10.0.0.5"))
    config = cluster_config(Settings(cluster="nats://n:4222", host="10.0.0.5", cluster_key="s"))
    assert config is not None and config.key == "s"


@pytest.mark.parametrize("name", ["has space", "a/b", "-lead", "x" * 64, "dot*"])
def test_a_node_name_that_is_not_a_plain_word_is_refused(name: str) -> None:
    with pytest.raises(SettingsError, match="SWITCHBOARD_NODE_NAME"):
        cluster_config(Settings(cluster="nats://n:4222", node_name=name))
