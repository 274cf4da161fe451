"""A conversation's key for the fleet's affinity routing: a hash of how it opens.

A follow-up of a conversation repeats everything before it, so the copy that served the last
turn holds most of its prompt in cache (llama-server gives a request the slot whose cached
prompt shares the longest prefix with it). Evaluating that prefix again costs far more than a
hop: hundreds of milliseconds for a few hundred tokens on a CPU, tens on a GPU, against about
a millisecond or two for the hop. So a request whose prompt is long enough carries the hash of
its opening (the system text and the messages up to the first user turn, which every later
turn repeats unchanged), and the fleet sends it to the copy that hash ranks first, unless that
copy is over its share of the load (:func:`runner.fleet_routing.choose`).
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

# A prompt given as one text (completions, a Responses string): its first characters are its
# opening.
OPENING_CHARS = 1024


def opening_key(data: dict[str, Any]) -> bytes | None:
    """8 bytes naming the conversation ``data`` continues, or None when it has no opening to
    go by. The same for every turn of one conversation, on every node."""
    opening: list[Any] = []
    for name in ("system", "instructions"):  # Anthropic's and Responses' system text
        if name in data:
            opening.append(data[name])
    for name in ("messages", "input", "prompt"):
        value = data.get(name)
        if isinstance(value, str):
            opening.append(value[:OPENING_CHARS])
            break
        if isinstance(value, list) and value:
            opening += _to_first_user_turn(value)
            break
    else:
        return None
    try:
        raw = orjson.dumps(opening)
    except orjson.JSONEncodeError:
        return None
    return hashlib.blake2b(raw, digest_size=8).digest()


def _to_first_user_turn(items: list[Any]) -> list[Any]:
    """The items up to and including the first one a user wrote: a conversation's opening."""
    for index, item in enumerate(items):
        if isinstance(item, int):  # a prompt of token ids: its first ones
            return items[:OPENING_CHARS // 4]
        if not isinstance(item, dict):  # several prompts (completions): the first one
            return [item[:OPENING_CHARS] if isinstance(item, str) else item]
        if item.get("role") == "user":
            return items[:index + 1]
    return items
