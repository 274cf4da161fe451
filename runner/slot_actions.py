"""What we ask of a llama-server's slots: save one to a file, restore one from a file, and
the tokens a request's prompt will be (to match it against saved caches before it runs).

The prompt's tokens come from the runner itself (``/apply-template`` for a chat body, then
``/tokenize`` with the special tokens the server adds to every prompt), so they are exactly
the ones its slot will hold: the chat template and the vocabulary are the runner's own.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson

CHAT_PATHS = frozenset({b"/v1/chat/completions", b"/chat/completions"})
COMPLETION_PATHS = frozenset({b"/v1/completions", b"/completions", b"/completion"})


class SlotActionError(Exception):
    """A runner refused or failed a slot action."""


async def _post(client: httpx.AsyncClient, url: str, api_key: str,
                body: dict[str, Any]) -> dict[str, Any]:
    try:
        response = await client.post(url, content=orjson.dumps(body), headers={
            "Authorization": f"Bearer {api_key}", "Content-Type": "application/json"})
    except httpx.HTTPError as exc:
        raise SlotActionError(f"{url}: {exc!r}") from exc
    if response.status_code != 200:
        raise SlotActionError(f"{url}: {response.status_code} {response.text[:200]}")
    try:
        data = orjson.loads(response.content)
    except orjson.JSONDecodeError as exc:
        raise SlotActionError(f"{url}: not JSON") from exc
    if not isinstance(data, dict):
        raise SlotActionError(f"{url}: not an object")
    return data


async def save(client: httpx.AsyncClient, base_url: str, api_key: str, slot: int,
               filename: str) -> int:
    """Save ``slot`` as ``filename`` in the runner's slot-save path: the tokens written."""
    data = await _post(client, f"{base_url}/slots/{slot}?action=save", api_key,
                       {"filename": filename})
    return int(data.get("n_saved", 0))


async def restore(client: httpx.AsyncClient, base_url: str, api_key: str, slot: int,
                  filename: str) -> int:
    """Load ``filename`` into ``slot``: the tokens it holds now."""
    data = await _post(client, f"{base_url}/slots/{slot}?action=restore", api_key,
                       {"filename": filename})
    return int(data.get("n_restored", 0))


async def prompt_tokens(client: httpx.AsyncClient, base_url: str, api_key: str, path: bytes,
                        body: bytes) -> list[int] | None:
    """The tokens the runner will evaluate for this request, or None for a request whose
    prompt is not plain text (images, token arrays, several prompts) or a route without a
    template we can ask for."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    if path in CHAT_PATHS:
        messages = data.get("messages")
        if not isinstance(messages, list) or not all(
                isinstance(m, dict) and isinstance(m.get("content", ""), str | None)
                for m in messages):
            return None  # content parts may carry images: left to the runner
        text = (await _post(client, f"{base_url}/apply-template", api_key, data)).get("prompt")
    elif path in COMPLETION_PATHS:
        text = data.get("prompt")
    else:
        return None
    if not isinstance(text, str):
        return None
    tokens = (await _post(client, f"{base_url}/tokenize", api_key,
                          {"content": text, "add_special": True, "parse_special": True}
                          )).get("tokens")
    if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
        return None
    return tokens
