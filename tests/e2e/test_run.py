"""`switchboard run` on the real runner and model: a prompt (or stdin) streams its answer and
exits; the chat keeps the conversation, takes multi-line input and its slash commands, and a
server's refusal is a line, not a traceback."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.run_cli import Session, chat
from tests.e2e.server import Served, environment, gemma_models, start_server

pytestmark = pytest.mark.usefixtures("real_variants")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, gemma_path: Path) -> Iterator[Served]:
    server = start_server(tmp_path_factory.mktemp("run"), gemma_models(gemma_path))
    yield server
    server.stop()


def _run(served: Served, *argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", "run", "--url", served.url,
                           *argv], input=stdin, capture_output=True, text=True, timeout=120,
                          env=environment())


def test_a_prompt_or_stdin_streams_one_answer_and_exits(served: Served) -> None:
    said = _run(served, "gemma3:270m", "Say", "hi")
    assert said.returncode == 0 and said.stdout.strip(), said.stderr
    piped = _run(served, "gemma", stdin="Say hi\n")
    assert piped.returncode == 0 and piped.stdout.strip(), piped.stderr
    unknown = _run(served, "nosuch:1b", "hi")
    assert unknown.returncode == 1 and unknown.stderr.strip() == "run: model 'nosuch:1b' not found"


def test_the_chat_keeps_the_conversation_and_takes_its_commands(served: Served) -> None:
    out: list[str] = []
    session = Session(served.url, None, "gemma3:270m", out.append)
    lines = iter(["/set parameter num_predict 3\n", '"""Tell me\n', 'about cats."""\n',
                  "And dogs?\n", "/set parameter bogus 1\n", "/clear\n", "Hi\n", "/bye\n",
                  "never read\n"])
    quiet = (lambda: None, lambda: None)
    assert chat(session, lines, lambda text: None, lambda: quiet) == 0
    assert next(lines) == "never read\n"  # /bye left
    assert session.options == {"max_tokens": 3}
    said = "".join(out)
    assert "Set parameter 'num_predict' to '3'" in said and "Unknown parameter 'bogus'" in said
    assert "Cleared session context" in said
    # After /clear only the last exchange is kept; the multi-line message was one turn.
    assert [m["role"] for m in session.messages] == ["user", "assistant"]
    assert session.messages[0]["content"] == "Hi"
