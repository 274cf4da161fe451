"""The CLI as a client of a running server (``run``, ``ps``, ``stop``, ``nodes``): which
server, with which key, and what its refusals say, whichever API family's shape they take."""

from __future__ import annotations

import argparse
from typing import Any

from runner.settings import Settings, load_settings


def server_url(settings: Settings) -> str:
    """The server the client verbs talk to: ``--url``/SWITCHBOARD_URL, else this machine's
    server as its own settings say."""
    if settings.url:
        return settings.url.rstrip("/")
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    return f"http://{host}:{settings.port}"


def client_headers(settings: Settings) -> dict[str, str]:
    """SWITCHBOARD_API_KEY, the client's own; else the server's first key, for a CLI run
    beside the server with its settings."""
    key = settings.api_key or (settings.api_keys[0] if settings.api_keys else None)
    return {"Authorization": f"Bearer {key}"} if key else {}


def client_settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(args.config)
    url = getattr(args, "url", None)
    return settings.model_copy(update={"url": url}) if url else settings


def error_message(response: Any) -> str:
    """What a server's error response says, whichever API family's shape it came in
    (OpenAI's, Anthropic's, Ollama's bare string) or none (a proxy's page)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    if isinstance(error, str):
        return error
    text = (response.text or "").strip().splitlines()
    return f"HTTP {response.status_code}" + (f": {text[0][:200]}" if text else "")
