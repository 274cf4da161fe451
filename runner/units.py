"""Human figures: memory in binary units, file sizes and counts in decimal (as `ollama ls`)."""

from __future__ import annotations

MiB = 1 << 20
GiB = 1 << 30


def format_bytes(count: float) -> str:
    """Memory and download amounts for messages: '3.1 GiB', '512 MiB'."""
    if count >= GiB:
        return f"{count / GiB:.1f} GiB"
    return f"{count / MiB:.0f} MiB"


def format_size(count: int) -> str:
    """A file's size as listings show it: '253.1 MB'."""
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} B"


def format_count(count: int) -> str:
    """A parameter count: '268.10M', '7.62B'."""
    for unit, scale in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if count >= scale:
            return f"{count / scale:.2f}{unit}"
    return str(count)
