"""``switchboard run MODEL [PROMPT]``: what an Ollama user types first.

With a prompt (or text on stdin), the answer streams to stdout and the command exits. Without
one, on a terminal, it is a chat that keeps the conversation: ``\"\"\"`` starts and ends a
multi-line message, ``/bye`` leaves, ``/clear`` forgets the conversation, ``/set parameter
NAME VALUE`` sets a sampling option (Ollama's names: temperature, num_predict, top_k …) and
``/set system TEXT`` the system prompt. A spinner turns while the model loads (the server's
load pings say it is loading). It talks to a running server (``--url``/SWITCHBOARD_URL,
SWITCHBOARD_API_KEY), which loads the model on demand.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson

from gateway.client import client_headers, client_settings, error_message, server_url

# Ollama's option names, as /set parameter takes them -> the OpenAI request field.
PARAMETERS: dict[str, tuple[str, type]] = {
    "temperature": ("temperature", float), "top_p": ("top_p", float), "top_k": ("top_k", int),
    "min_p": ("min_p", float), "seed": ("seed", int), "num_predict": ("max_tokens", int),
    "repeat_penalty": ("repeat_penalty", float), "presence_penalty": ("presence_penalty", float),
    "frequency_penalty": ("frequency_penalty", float), "stop": ("stop", str),
}
HELP = ('commands: /bye, /clear, /set parameter NAME VALUE, /set system TEXT, /? ; '
        '""" starts and ends a multi-line message')


class RunError(Exception):
    """A server's refusal or absence, said in one line."""


class Session:
    """One conversation with one model on one server."""

    def __init__(self, url: str, key: str | None, model: str,
                 write: Callable[[str], None]) -> None:
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.model = model
        self.write = write
        self.messages: list[dict[str, str]] = []
        self.options: dict[str, Any] = {}
        self.system: str | None = None

    def ask(self, text: str, loading: Callable[[], None] = lambda: None,
            loaded: Callable[[], None] = lambda: None) -> str:
        """Send ``text`` as the next user turn; the answer, streamed to ``write``."""
        history = [{"role": "system", "content": self.system}] if self.system else []
        turn = {"role": "user", "content": text}
        body = {"model": self.model, "stream": True, **self.options,
                "messages": [*history, *self.messages, turn]}
        answer: list[str] = []
        try:
            with httpx.stream("POST", f"{self.url}/v1/chat/completions", json=body,
                              headers=self.headers, timeout=httpx.Timeout(600, connect=10)) as r:
                if r.status_code != 200:
                    r.read()
                    raise RunError(error_message(r))
                waiting = True
                for line in r.iter_lines():
                    if line.startswith(": loading"):
                        loading()
                        continue
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    event = orjson.loads(line[6:])
                    if "error" in event:
                        raise RunError(str(event["error"].get("message", event["error"])))
                    for choice in event.get("choices", []):
                        piece = (choice.get("delta") or {}).get("content") or ""
                        if piece:
                            if waiting:
                                loaded()
                                waiting = False
                            answer.append(piece)
                            self.write(piece)
                loaded()
        except httpx.HTTPError as exc:
            raise RunError(f"cannot reach switchboard at {self.url}: {exc}") from None
        said = "".join(answer)
        self.messages += [turn, {"role": "assistant", "content": said}]
        return said

    def command(self, line: str) -> bool:
        """Carry out a slash command; False when it is /bye."""
        words = line.split()
        if words[0] in ("/bye", "/exit"):
            return False
        if words[0] == "/clear":
            self.messages.clear()
            self.write("Cleared session context\n")
        elif words[:2] == ["/set", "parameter"] and len(words) >= 4:
            self._set(words[2], " ".join(words[3:]))
        elif words[:2] == ["/set", "system"] and len(words) >= 3:
            self.system = line.split(None, 2)[2]
            self.write("Set system message.\n")
        else:
            self.write(f"Unknown command '{words[0]}'. {HELP}\n")
        return True

    def _set(self, name: str, raw: str) -> None:
        known = PARAMETERS.get(name)
        if known is None:
            self.write(f"Unknown parameter '{name}': {', '.join(PARAMETERS)}\n")
            return
        field, kind = known
        try:
            value = kind(raw)
        except ValueError:
            self.write(f"'{raw}' is not a valid {kind.__name__} for {name}\n")
            return
        self.options[field] = [value] if field == "stop" else value
        self.write(f"Set parameter '{name}' to '{raw}'\n")


def chat(session: Session, lines: Iterator[str], prompt: Callable[[str], None],
         spinner: Callable[[], tuple[Callable[[], None], Callable[[], None]]]) -> int:
    """The interactive loop over ``lines`` (a terminal's, or a test's)."""
    while True:
        prompt(">>> ")
        line = next(lines, None)
        if line is None:
            return 0
        line = line.rstrip("\n")
        if line.lstrip().startswith('"""'):
            line = _multiline(line.lstrip()[3:], lines, prompt)
        if not line.strip():
            continue
        if line.startswith("/"):
            if not session.command(line):
                return 0
            continue
        loading, loaded = spinner()
        try:
            session.ask(line, loading, loaded)
        except RunError as exc:
            loaded()
            session.write(f"Error: {exc}\n")
            continue
        session.write("\n\n")


def _multiline(first: str, lines: Iterator[str], prompt: Callable[[str], None]) -> str:
    if first.rstrip().endswith('"""'):
        return first.rstrip()[:-3]
    parts = [first]
    while True:
        prompt("... ")
        line = next(lines, None)
        if line is None:
            return "\n".join(parts)
        line = line.rstrip("\n")
        if line.rstrip().endswith('"""'):
            parts.append(line.rstrip()[:-3])
            return "\n".join(parts).strip("\n")
        parts.append(line)


def _spinner() -> tuple[Callable[[], None], Callable[[], None]]:
    """(loading, loaded) for a turn: a spinner on stderr while the model loads."""
    from rich.console import Console

    status = Console(stderr=True).status("loading the model …", spinner="dots")
    shown = False

    def loading() -> None:
        nonlocal shown
        if not shown and sys.stderr.isatty():
            status.start()
            shown = True

    def loaded() -> None:
        nonlocal shown
        if shown:
            status.stop()
            shown = False

    return loading, loaded


def cmd_run(args: argparse.Namespace) -> int:
    settings = client_settings(args)
    key = client_headers(settings).get("Authorization", "").removeprefix("Bearer ") or None

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    session = Session(server_url(settings), key, args.model, write)
    text = " ".join(args.prompt) if args.prompt else None
    if text is None and not sys.stdin.isatty():
        text = sys.stdin.read().strip() or None
    if text is not None:
        loading, loaded = _spinner()
        try:
            session.ask(text, loading, loaded)
        except RunError as exc:
            loaded()
            print(f"run: {exc}", file=sys.stderr)
            return 1
        write("\n")
        return 0
    print(HELP, file=sys.stderr)
    return chat(session, iter(sys.stdin.readline, ""), write, _spinner)


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                 common: argparse.ArgumentParser, client: argparse.ArgumentParser) -> None:
    run = sub.add_parser("run", parents=[common, client],
                         help="chat with a model on a running server (or answer one prompt)")
    run.add_argument("model", metavar="MODEL")
    run.add_argument("prompt", nargs="*", metavar="PROMPT",
                     help="answer this and exit (text on stdin works too)")
    run.set_defaults(func=cmd_run)
