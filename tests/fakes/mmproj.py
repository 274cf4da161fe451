"""A tiny vision projector ("mmproj") GGUF and a tiny PNG, so tests can prove the image pipeline
end to end with the real runner: llama-server loads the projector with `--mmproj`, takes an image
in a chat request, and counts the image's tokens in `usage.prompt_tokens`. No real projector is
small enough to ship with the tests, and eyesight does not matter here, so the weights are random.

It writes the LLaVA-style projector, type "mlp": a CLIP ViT followed by mm.0 -> GELU -> mm.2.
That is the least the pinned loader (tools/mtmd/clip.cpp) accepts: plain CLIP tensor names, no
per-model hyperparameters, fixed-size preprocessing (every image is resized to `IMAGE_SIZE`
square), and no special marker tokens the text model's vocabulary would have to hold. With a
28x28 image and 14x14 patches every image costs `IMAGE_TOKENS` (4) tokens, whatever its size.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from gguf import GGUFWriter

IMAGE_SIZE = 28
PATCH_SIZE = 14
IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2

# The ViT is as small as the graph allows. Two blocks, because the llava graph stops one block
# short of the last (it feeds the projector the second-to-last layer), so one block would never run.
_VIT_EMBD = 32
_VIT_HEADS = 2
_VIT_FF = 64  # must differ from _VIT_EMBD, or the loader takes ffn_up/ffn_down for a legacy swap
_VIT_BLOCKS = 2
_MM_HIDDEN = 64


def write_mmproj(path: Path, n_embd: int = 640) -> Path:
    """Write the projector to `path`. `n_embd` must equal the text model's embedding size (640 for
    Gemma 3 270M): mtmd compares it with mm.2's output size and refuses the pair otherwise."""
    rng = np.random.default_rng(0)

    def weights(*shape: int) -> np.ndarray[tuple[int, ...], np.dtype[np.float32]]:
        # Small, so activations stay finite through the untrained layers.
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    def ones(n: int) -> np.ndarray[tuple[int, ...], np.dtype[np.float32]]:
        return np.ones(n, dtype=np.float32)

    def zeros(n: int) -> np.ndarray[tuple[int, ...], np.dtype[np.float32]]:
        return np.zeros(n, dtype=np.float32)

    writer = GGUFWriter(str(path), "clip")
    writer.add_string("general.name", "switchboard tiny test mmproj")
    writer.add_string("clip.projector_type", "mlp")
    writer.add_bool("clip.has_vision_encoder", True)
    writer.add_bool("clip.use_gelu", True)
    # All of these are required: the loader throws "Key not found" for any that is missing.
    writer.add_uint32("clip.vision.image_size", IMAGE_SIZE)
    writer.add_uint32("clip.vision.patch_size", PATCH_SIZE)
    writer.add_uint32("clip.vision.embedding_length", _VIT_EMBD)
    writer.add_uint32("clip.vision.feed_forward_length", _VIT_FF)
    writer.add_uint32("clip.vision.block_count", _VIT_BLOCKS)
    writer.add_uint32("clip.vision.attention.head_count", _VIT_HEADS)
    writer.add_uint32("clip.vision.projection_dim", n_embd)
    writer.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-5)
    # Must be float32 arrays of at least three values, else the loader refuses the file.
    writer.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    writer.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])

    # numpy shapes are ggml's `ne` reversed: a linear layer is (out, in).
    writer.add_tensor("v.patch_embd.weight", weights(_VIT_EMBD, 3, PATCH_SIZE, PATCH_SIZE))
    writer.add_tensor("v.patch_embd.bias", zeros(_VIT_EMBD))
    writer.add_tensor("v.position_embd.weight", weights(IMAGE_TOKENS, _VIT_EMBD))
    writer.add_tensor("v.pre_ln.weight", ones(_VIT_EMBD))
    writer.add_tensor("v.pre_ln.bias", zeros(_VIT_EMBD))
    for i in range(_VIT_BLOCKS):
        blk = f"v.blk.{i}"
        for norm in ("ln1", "ln2"):
            writer.add_tensor(f"{blk}.{norm}.weight", ones(_VIT_EMBD))
            writer.add_tensor(f"{blk}.{norm}.bias", zeros(_VIT_EMBD))
        for attn in ("attn_q", "attn_k", "attn_v", "attn_out"):
            writer.add_tensor(f"{blk}.{attn}.weight", weights(_VIT_EMBD, _VIT_EMBD))
            writer.add_tensor(f"{blk}.{attn}.bias", zeros(_VIT_EMBD))
        writer.add_tensor(f"{blk}.ffn_up.weight", weights(_VIT_FF, _VIT_EMBD))
        writer.add_tensor(f"{blk}.ffn_up.bias", zeros(_VIT_FF))
        writer.add_tensor(f"{blk}.ffn_down.weight", weights(_VIT_EMBD, _VIT_FF))
        writer.add_tensor(f"{blk}.ffn_down.bias", zeros(_VIT_EMBD))
    writer.add_tensor("mm.0.weight", weights(_MM_HIDDEN, _VIT_EMBD))
    writer.add_tensor("mm.0.bias", zeros(_MM_HIDDEN))
    # mm.2 is optional to the loader but not to mtmd, which reads the output size from it.
    writer.add_tensor("mm.2.weight", weights(n_embd, _MM_HIDDEN))
    writer.add_tensor("mm.2.bias", zeros(n_embd))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def tiny_png(width: int = 28, height: int = 28) -> bytes:
    """An RGB PNG of a colour gradient, built with zlib alone so no image library is needed."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    rows = bytearray()
    for y in range(height):
        rows.append(0)  # filter type "none" for this scanline
        for x in range(width):
            rows += bytes((x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), 128))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(rows)))
        + chunk(b"IEND", b"")
    )
