"""Runner snapshots made by hand, as a node's record carries them."""

from __future__ import annotations

from runner.service_types import RunnerInfo


def runner_info(model: str, busy: int = 0, slots: int = 1, draining: bool = False,
                mode: str = "chat", node: str = "") -> RunnerInfo:
    """A loaded runner of ``model`` with ``busy`` of its ``slots`` taken."""
    return RunnerInfo(runner=model if mode == "chat" else f"{model}+{mode}", model=model,
                      mode=mode, pid=4242, variant="cpu", ctx_size=4096, parallel=slots,
                      in_flight=busy, draining=draining, expires_at=None, keep_alive=300.0,
                      load_seconds=0.5, estimated_bytes=1 << 28, actual_bytes=None, node=node)
