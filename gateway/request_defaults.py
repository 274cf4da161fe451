"""A model's defaults put into a request that brings none of its own: Ollama's SYSTEM,
MESSAGE and ``stop`` parameter, on every API family.

Applied by the node that runs the request, once it holds the lease (a node routing to another
has no say in the other's models), to the body as llama-server will read it: translated
requests (Ollama's) are OpenAI chat bodies by then.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import APIError
from runner.service import RequestDefaults

# The roles a request's own system prompt comes in, by API.
_SYSTEM_ROLES = frozenset({"system", "developer"})


def apply_defaults(path: bytes, data: dict[str, Any], defaults: RequestDefaults) -> bool:
    """Put ``defaults`` into ``data`` (in place) where it says nothing itself; whether
    anything changed."""
    if path in (b"/v1/chat/completions", b"/apply-template"):  # the latter shows the prompt
        return _chat(data, defaults)
    if path == b"/v1/messages":
        return _anthropic(data, defaults)
    if path == b"/v1/responses":
        return _responses(data, defaults)
    if path == b"/v1/completions":
        return _stop(data, "stop", defaults)
    return False


def _stop(data: dict[str, Any], field: str, defaults: RequestDefaults) -> bool:
    if not defaults.stop or data.get(field):
        return False
    data[field] = list(defaults.stop)
    return True


def _chat(data: dict[str, Any], defaults: RequestDefaults) -> bool:
    changed = _stop(data, "stop", defaults)
    messages = data.get("messages")
    if not isinstance(messages, list):
        return changed
    leading = 0  # the request's own system messages stay first
    while leading < len(messages) and isinstance(messages[leading], dict) and \
            messages[leading].get("role") in _SYSTEM_ROLES:
        leading += 1
    before: list[dict[str, Any]] = []
    if defaults.system and leading == 0:
        before.append({"role": "system", "content": defaults.system})
    before += [dict(m) for m in defaults.messages]
    if before:
        data["messages"] = [*messages[:leading], *before, *messages[leading:]]
        changed = True
    return changed


def _anthropic(data: dict[str, Any], defaults: RequestDefaults) -> bool:
    changed = _stop(data, "stop_sequences", defaults)
    if defaults.system and not data.get("system"):
        data["system"] = defaults.system
        changed = True
    # Anthropic's messages are the user's and the assistant's; a system MESSAGE has no place.
    turns = [dict(m) for m in defaults.messages if m["role"] in ("user", "assistant")]
    if turns and isinstance(data.get("messages"), list):
        data["messages"] = [*turns, *data["messages"]]
        changed = True
    return changed


def _responses(data: dict[str, Any], defaults: RequestDefaults) -> bool:
    changed = False
    if defaults.system and not data.get("instructions"):
        data["instructions"] = defaults.system
        changed = True
    if defaults.messages:
        given = data.get("input")
        if isinstance(given, str):
            given = [{"role": "user", "content": given}]
        if isinstance(given, list):
            data["input"] = [*(dict(m) for m in defaults.messages), *given]
            changed = True
    return changed


def check_lora(model: str, data: dict[str, Any], adapters: int) -> None:
    """A request's own adapter scales (llama-server's ``lora``, already shaped by the
    allowlist) name adapters its model has: a 400 otherwise, before the runner sees it."""
    chosen = data.get("lora")
    if not chosen:
        return
    if not adapters:
        raise APIError(400, f"model '{model}' has no adapters: 'lora' picks among a model's "
                       "configured ones", param="lora")
    for entry in chosen:
        if entry["id"] >= adapters:
            raise APIError(400, f"'{model}' has {adapters} adapters (lora ids 0-{adapters - 1}); "
                           f"there is no id {entry['id']}", param="lora")
