"""Client-controlled text in log lines: escaped, so it can neither forge a line nor send a
terminal escape sequence (issue 18)."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
from starlette.types import Message, Receive, Scope, Send

from gateway.access_log import AccessLog
from gateway.log_escape import escape, escape_quoted


@pytest.mark.parametrize(("raw", "escaped"), [
    ("/v1/models", "/v1/models"),
    ("/v1/models\nFORGED", "/v1/models\\nFORGED"),
    ("a\r\nb\tc", "a\\r\\nb\\tc"),
    ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
    ("nul\x00del\x7f", "nul\\x00del\\x7f"),
    ("c1\x85\x9b", "c1\\x85\\x9b"),  # NEL and CSI: line break and escape on some terminals
    ("ls\u2028ps\u2029", "ls\\u2028ps\\u2029"),
    ("rlo\u202eevil", "rlo\\u202eevil"),  # a bidi override reorders what the reader sees
    ("gemma3:270m é 模型 🙂", "gemma3:270m é 模型 🙂"),  # printable text is left as it is
])
def test_escape_writes_control_characters_as_backslash_escapes(raw: str, escaped: str) -> None:
    assert escape(raw) == escaped
    assert escape(raw).isprintable()


def test_escape_returns_printable_text_itself_without_copying() -> None:
    text = "GET /v1/chat/completions " * 4
    assert escape(text) is text and escape_quoted(text) is text


def test_escape_quoted_keeps_a_value_inside_its_quotes() -> None:
    assert escape_quoted('/x" 200 0.1ms id=a') == r'/x\" 200 0.1ms id=a'
    # A backslash the client typed cannot pass for one of our escapes.
    assert escape_quoted("/typed\\n/sent\n") == r"/typed\\n/sent\n"


def test_the_serve_log_format_escapes_every_message_but_keeps_tracebacks_multiline() -> None:
    # A subprocess, since _setup_logging configures the root logger of the process it runs in.
    script = r"""
import logging
from gateway.cli import _setup_logging
_setup_logging("info")
log = logging.getLogger("switchboard.relay")
log.info("client left; cancelled its request for %s", "m\n2026-12-02 FORGED \x1b[31m")
try:
    raise ValueError("bad \x1b[2J name")
except ValueError:
    log.exception("pull failed for %s", "x\ry")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60,
                            check=True)
    lines = result.stderr.decode().split("\n")
    assert lines[0].endswith(
        "client left; cancelled its request for m\\n2026-12-02 FORGED \\x1b[31m")
    assert lines[1].endswith("pull failed for x\\ry")
    assert lines[2] == "Traceback (most recent call last):"  # the traceback keeps its lines
    assert "ValueError: bad \\x1b[2J name" in lines
    assert b"\x1b" not in result.stderr and b"\r" not in result.stderr


async def test_access_log_escapes_the_path_and_method_even_under_another_formatter(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        pass

    scope: Scope = {"type": "http", "method": "GET\x1b",
                    "path": '/v1/models\nFORGED" 200\x1b[31m',
                    "headers": [], "client": ("127.0.0.1", 5000)}
    with caplog.at_level(logging.INFO, logger="switchboard.access"):
        await AccessLog(app)(scope, receive, send)
    (record,) = caplog.records
    assert '"GET\\x1b /v1/models\\nFORGED\\" 200\\x1b[31m" 404' in record.getMessage()
