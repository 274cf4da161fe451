"""Log lines that clients cannot forge: text they control (a path, a model name, a runner's
output) is written with its unprintable characters as backslash escapes (``\\n``, ``\\x1b``,
``\\u2028``), so it can neither start a line that looks like our own nor send a terminal escape
sequence to whoever tails the log.

``escape`` is for one value; ``EscapingFormatter`` applies it to every record ``switchboard
serve`` writes.
"""

from __future__ import annotations

import logging
from types import TracebackType

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]


def _escaped(char: str) -> str:
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def escape(text: str) -> str:
    """``text`` with every character ``str.isprintable`` refuses escaped.

    That is C0, DEL and C1 controls, but also U+2028/2029 and the other separators and format
    characters (bidi overrides reorder what the reader sees); only the ASCII space stays raw.
    """
    # The common case costs one scan in C and returns the string itself.
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else _escaped(char) for char in text)


def escape_quoted(text: str) -> str:
    """``escape`` for a value the log line puts in double quotes: ``"`` and ``\\`` get a
    backslash too, so a path cannot close the quotes and append a status of its own."""
    if text.isprintable() and '"' not in text and "\\" not in text:
        return text
    return escape(text.replace("\\", "\\\\").replace('"', '\\"'))


def escape_lines(text: str) -> str:
    """``escape`` for text that is meant to span lines (a traceback): its ``\\n`` stay."""
    return "\n".join(escape(line) for line in text.split("\n"))


class EscapingFormatter(logging.Formatter):
    """Every record on one line of printable text; a traceback keeps its line breaks (it is
    ours, and unreadable on one line) but not its other control characters, since an
    exception's message may quote what a client sent."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape(super().formatMessage(record))

    def formatException(self, ei: _ExcInfo) -> str:
        return escape_lines(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return escape_lines(super().formatStack(stack_info))
