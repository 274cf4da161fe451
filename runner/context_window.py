"""How much of a runner's context one request gets, from its GGUF header and its arguments."""

from __future__ import annotations

from pathlib import Path

from runner.gguf_header import GGUFError, GGUFInfo, read_header
from runner.service_types import ContextWindow


def _flag(args: tuple[str, ...], names: tuple[str, ...]) -> int | None:
    """The last integer value of one of ``names`` in ``args`` (llama-server takes the last)."""
    found = None
    for i, arg in enumerate(args[:-1]):
        if arg in names and args[i + 1].isdigit():
            found = int(args[i + 1])
    return found


def runner_context(ctx_size: int, args: tuple[str, ...], trained: int) -> int:
    """The context a runner is started with: its ``args``' ``-c`` if any, else the configured
    ``ctx_size``, else (0) the model's ``trained`` one."""
    return _flag(args, ("-c", "--ctx-size")) or ctx_size or trained


def runner_slots(parallel: int, args: tuple[str, ...]) -> int:
    return _flag(args, ("-np", "--parallel")) or parallel


def context_window(model_path: Path, ctx_size: int, parallel: int, args: tuple[str, ...],
                   info: GGUFInfo | None = None) -> ContextWindow:
    """The context one request may use on a runner, rounded up where llama-server might give
    more: it splits its context between its slots unless its KV cache is unified, and pads each
    slot's share to a multiple of 256. A model's ``args`` come last on its command line, so they
    override the configured context and slots. Unknown (zeros) for a header it cannot read:
    llama-server says what is wrong with the file."""
    if info is None:
        try:
            info = read_header(model_path)
        except (GGUFError, OSError):
            return ContextWindow()
    ctx = runner_context(ctx_size, args, info.arch_int("context_length"))
    parallel = runner_slots(parallel, args)
    unified = "--kv-unified" in args or "-kvu" in args
    slot = ctx if unified else ctx // max(parallel, 1)
    return ContextWindow(-(-slot // 256) * 256, info.longest_token)
