"""Run by tests/cluster/test_membership.py: two members with replicas=3, joined through the
two NATS URLs given; prints the bucket's replicas, then what each member sees."""

from __future__ import annotations

import asyncio
import sys
import time

from runner.cluster_config import ClusterConfig
from runner.membership import Membership
from runner.service_types import NodeRecord


def _member(url: str, name: str) -> Membership:
    config = ClusterConfig(url, name, "http://127.0.0.1:1", "key", replicas=3)
    return Membership(config, lambda: NodeRecord(name, config.advertise_url, "0.1.0"), 2.0,
                      connect_timeout=1.0)


async def main(first: str, second: str) -> int:
    a, b = _member(first, "a"), _member(second, "b")
    await a.start()
    await b.start()
    try:
        deadline = time.monotonic() + 45  # JetStream elects its meta leader first
        while time.monotonic() < deadline:
            if len(a.nodes()) == 2 and len(b.nodes()) == 2:
                break
            await asyncio.sleep(0.1)
        assert a._kv is not None, "never joined"
        status = await a._kv.status()
        print(f"replicas={status.stream_info.config.num_replicas}")
        for member in (a, b):
            print(",".join(record.name for record in member.nodes()))
    finally:
        await a.close()
        await b.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2])))
