"""The smallest valid GGUF: a header with no metadata and no tensors. Fake runners never read
it, but switchboard checks every model file before it starts a runner on it."""

from __future__ import annotations

import struct
from pathlib import Path

EMPTY_GGUF = b"GGUF" + struct.pack("<IQQ", 3, 0, 0)


def write_empty_gguf(path: Path) -> Path:
    path.write_bytes(EMPTY_GGUF)
    return path
