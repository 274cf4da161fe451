"""A tiny LoRA adapter GGUF, so tests can prove adapters load in the real runner: llama-server
takes it with `--lora FILE` or `--lora-scaled FILE:SCALE`, lists it at GET /lora-adapters, and
still answers chat requests. No real adapter for the test model is small enough to ship with the
tests, and what the adapter teaches does not matter here, so the weights are random.

The layout is the least the pinned loader (src/llama-adapter.cpp) accepts, the same one
convert_lora_to_gguf.py writes: `general.type` "adapter", `adapter.type` "lora",
`adapter.lora.alpha`, `general.architecture` copied from the base (the loader refuses a
mismatch), and one `<base tensor>.lora_a` / `.lora_b` pair per adapted weight. It adapts only
`TARGETS`, the query and value projections of block 0 (the pair PEFT adapts by default), so the
file stays about 20 KiB at rank 2 yet really changes the graph. The pairs are f32: the loader
copies them as they are, and every backend multiplies f32 by f32, so no quantisation can make a
backend refuse them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGUFType, GGUFWriter, Keys

# Names as the base GGUF spells them; the loader looks each one up in the base model and throws
# "does not exist in base model" for any it cannot find.
TARGETS = ("blk.0.attn_q.weight", "blk.0.attn_v.weight")


def _base_info(base: Path) -> tuple[str, dict[str, tuple[int, int]]]:
    """The base's architecture and the ggml shape (ne0 = inputs, ne1 = outputs) of each target."""
    reader = GGUFReader(base)
    field = reader.get_field(Keys.General.ARCHITECTURE)
    if field is None:
        raise ValueError(f"{base} has no {Keys.General.ARCHITECTURE}")
    arch = str(field.contents())
    shapes: dict[str, tuple[int, int]] = {}
    for tensor in reader.tensors:
        if tensor.name in TARGETS:
            n_in, n_out = (int(n) for n in tensor.shape)
            shapes[tensor.name] = (n_in, n_out)
    missing = [name for name in TARGETS if name not in shapes]
    if missing:
        raise ValueError(f"{base} lacks {', '.join(missing)}; is it a Gemma 3 model?")
    return arch, shapes


def write_lora(path: Path, base: Path, rank: int = 2) -> Path:
    """Write a rank-`rank` adapter for the base GGUF at `base` to `path` and return `path`."""
    if rank < 1:
        raise ValueError(f"rank must be at least 1, not {rank}")
    arch, shapes = _base_info(base)
    rng = np.random.default_rng(0)

    writer = GGUFWriter(str(path), arch)  # also writes general.architecture
    writer.add_type(GGUFType.ADAPTER)
    writer.add_string(Keys.Adapter.TYPE, "lora")
    writer.add_string(Keys.General.NAME, "switchboard tiny test lora")
    # The runner scales each pair by scale * alpha / rank; alpha = rank makes that just the
    # scale given with --lora-scaled (or 1 with --lora), so a test can reason about it.
    writer.add_float32(Keys.Adapter.LORA_ALPHA, float(rank))

    for name in TARGETS:
        n_in, n_out = shapes[name]
        # numpy shapes are ggml's `ne` reversed. The loader wants lora_a's ne = (n_in, rank) and
        # lora_b's ne = (rank, n_out); any other layout is refused as a wrong base or as an
        # untransposed adapter from the old "finetune" example.
        # Small, so the delta stays a nudge and the untrained model still says something.
        lora_a = (rng.standard_normal((rank, n_in)) * 0.01).astype(np.float32)
        lora_b = (rng.standard_normal((n_out, rank)) * 0.01).astype(np.float32)
        writer.add_tensor(f"{name}.lora_a", lora_a)
        writer.add_tensor(f"{name}.lora_b", lora_b)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
