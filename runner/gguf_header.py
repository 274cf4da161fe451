"""Just enough of a GGUF header for memory estimates: scalar metadata and tensor sizes.

``gguf.GGUFReader`` builds a numpy view for every array element, which for a 262,144-token
vocabulary takes 13 s here; this reads the same header in milliseconds by skipping array
contents. The format's enums and the quantisation block sizes come from the ``gguf`` package.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from math import prod
from pathlib import Path

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

_MAGIC = b"GGUF"
_SCALARS: dict[GGUFValueType, str] = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H", GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q", GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}

Scalar = int | float | bool | str


class GGUFError(ValueError):
    """The file is not a GGUF this reader understands."""


@dataclass(frozen=True)
class GGUFInfo:
    """Scalar metadata (arrays appear as their length), tensor bytes and parameter count."""

    metadata: dict[str, Scalar]
    tensor_bytes: int
    tensor_count: int
    parameters: int = 0
    data_end: int = 0  # where the last tensor's data ends: a shorter file is truncated
    # Bytes of the vocabulary's longest token: a text of N bytes is at least N / this many
    # tokens, which tells a prompt that cannot fit the context without tokenizing it.
    longest_token: int = 0

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def arch_int(self, key: str, default: int = 0) -> int:
        value = self.metadata.get(f"{self.architecture}.{key}", default)
        return int(value) if isinstance(value, int | float) else default


class _Cursor:
    # Reads the mmap directly: a memoryview export would keep the map from closing while an
    # exception's traceback still references this cursor.
    def __init__(self, buf: mmap.mmap) -> None:
        self.buf = buf
        self.pos = 0
        self.longest = 0  # of the strings in the last string array read

    def unpack(self, fmt: str) -> Scalar:
        value: Scalar = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return value

    def u32(self) -> int:
        return int(self.unpack("<I"))

    def u64(self) -> int:
        return int(self.unpack("<Q"))

    def string(self) -> str:
        length = self.u64()
        raw = self.buf[self.pos : self.pos + length]
        self.pos += length
        return raw.decode("utf-8", "replace")

    def skip_string(self) -> None:
        self.pos += 8 + int(struct.unpack_from("<Q", self.buf, self.pos)[0])

    def value(self, kind: GGUFValueType) -> Scalar:
        if kind is GGUFValueType.STRING:
            return self.string()
        if kind is GGUFValueType.ARRAY:
            item = GGUFValueType(self.u32())
            count = self.u64()
            if item is GGUFValueType.STRING:
                longest, buf, pos = 0, self.buf, self.pos
                for _ in range(count):
                    length = int(struct.unpack_from("<Q", buf, pos)[0])
                    pos += 8 + length
                    if length > longest:
                        longest = length
                self.pos, self.longest = pos, longest
            elif item is GGUFValueType.ARRAY:
                for _ in range(count):
                    self.value(item)
            else:
                self.pos += count * struct.calcsize(_SCALARS[item])
            return count
        return self.unpack(_SCALARS[kind])


def _tensor_bytes(dims: list[int], kind: int) -> int:
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
    return prod(dims) // block * size


_parsed: dict[Path, tuple[tuple[int, int, int, int], GGUFInfo]] = {}
_PARSED_MAX = 64


def _version(path: Path) -> tuple[int, int, int, int]:
    stat = path.stat()
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


def cached_header(path: Path) -> GGUFInfo | None:
    """``read_header`` if this version of the file was parsed already, else None: a stat and
    a lookup, cheap enough for the event loop."""
    known = _parsed.get(path)
    try:
        return known[1] if known is not None and known[0] == _version(path) else None
    except OSError:
        return None


def read_header(path: Path) -> GGUFInfo:
    """Parse ``path``'s metadata and tensor table, once per version of the file (its inode,
    size and mtime); raises :class:`GGUFError` if it is not GGUF. Gemma 270M's 262,144-token
    vocabulary makes one parse 30 to 60 ms of CPU, which every load paid, twice, while
    llama-server was loading beside it on the same two cores."""
    version = _version(path)
    known = _parsed.get(path)
    if known is not None and known[0] == version:
        return known[1]
    info = _parse(path)
    if len(_parsed) >= _PARSED_MAX:
        _parsed.clear()  # a bound, not a policy: a gateway serves a handful of files
    _parsed[path] = (version, info)
    return info


def _parse(path: Path) -> GGUFInfo:
    with path.open("rb") as f:
        try:
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError as exc:  # empty file
            raise GGUFError(f"{path} is empty") from exc
    with mapped:
        cur = _Cursor(mapped)
        try:
            if cur.buf[:4] != _MAGIC:
                raise GGUFError(f"{path} is not a GGUF file")
            cur.pos = 4
            version = cur.u32()
            if version < 2:
                raise GGUFError(f"{path}: GGUF version {version} is too old")
            tensor_count, kv_count = cur.u64(), cur.u64()
            metadata: dict[str, Scalar] = {}
            longest_token = 0
            for _ in range(kv_count):
                key = cur.string()
                metadata[key] = cur.value(GGUFValueType(cur.u32()))
                if key == "tokenizer.ggml.tokens":
                    longest_token = cur.longest
            total = parameters = last_end = 0
            for _ in range(tensor_count):
                cur.skip_string()
                dims = [cur.u64() for _ in range(cur.u32())]
                kind = cur.u32()
                offset = cur.u64()  # relative to the aligned start of the data section
                size = _tensor_bytes(dims, kind)
                total += size
                parameters += prod(dims)
                last_end = max(last_end, offset + size)
            alignment = metadata.get("general.alignment", 32)
            align = int(alignment) if isinstance(alignment, int) and alignment > 0 else 32
            data_start = -(-cur.pos // align) * align
        except (struct.error, ValueError, KeyError, IndexError) as exc:
            if isinstance(exc, GGUFError):
                raise
            raise GGUFError(f"{path}: malformed GGUF header ({exc})") from exc
    data_end = data_start + last_end if tensor_count else cur.pos
    return GGUFInfo(metadata, total, tensor_count, parameters, data_end, longest_token)
