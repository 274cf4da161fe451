"""Which request fields reach a runner, per API family, and the bound on each.

llama-server trusts its client: one request with a grammar nested 20,000 groups deep crashes
it (SIGSEGV, every stream on it lost), ``n_probs: 262144`` makes it allocate gigabytes, and 50
DRY sequence breakers of 100 KB each cost it 76 s and 16.8 GB. The gateway is that client, so
every body it relays passes :meth:`Allowlist.vet` first (from :meth:`gateway.relay.Relay.
for_request`, the one place bodies leave for a runner):

- a field outside the family's list is dropped (``SWITCHBOARD_PASS_UNKNOWN_FIELDS`` passes them
  instead, for trusted clients), so a new llama-server knob is never exposed by accident;
- a field on the list that can cost memory or time is held to a bound (each a setting); one
  over its bound is a 400 that names the field, its value and the setting.

The lists are OpenAI's, Anthropic's and llama.cpp's documented fields for each endpoint, plus
the llama.cpp sampling extensions we support. Left out on purpose: ``id_slot`` (a client would
pick another's slot), ``n_cmpl`` and ``n_cache_reuse`` (runner-wide costs), ``verbose`` and
``response_fields`` (debug), and llama-server's
internal ``grammar_triggers``/``preserved_tokens``/``chat_parser``/``reasoning_budget_*`` tags.

Checking costs one set lookup per top-level field; only fields that are present are measured.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from gateway.errors import APIError
from runner.service import ContextWindow
from runner.settings import Settings

_SAMPLING = frozenset({
    # llama.cpp's sampling and generation fields (tools/server/server-schema.cpp)
    "temperature", "top_k", "top_p", "min_p", "typical_p", "top_n_sigma",
    "xtc_probability", "xtc_threshold", "dynatemp_range", "dynatemp_exponent",
    "repeat_last_n", "repeat_penalty", "frequency_penalty", "presence_penalty",
    "dry_multiplier", "dry_base", "dry_allowed_length", "dry_penalty_last_n",
    "dry_sequence_breakers", "mirostat", "mirostat_tau", "mirostat_eta", "seed",
    "n_probs", "post_sampling_probs", "samplers", "logit_bias", "ignore_eos",
    "grammar", "json_schema", "stop", "n_predict", "max_tokens", "n_keep", "cache_prompt",
    "timings_per_token", "return_tokens", "return_progress", "t_max_predict_ms",
    "stream", "stream_options",
    "lora",  # scales of the model's own adapters (ids checked once the model is known)
})
_CHAT_TEMPLATE = frozenset({
    "chat_template_kwargs", "reasoning_format", "parse_tool_calls", "add_generation_prompt",
})

# Upstream path -> the fields that may reach it.
FIELDS: dict[bytes, frozenset[str]] = {
    b"/v1/chat/completions": _SAMPLING | _CHAT_TEMPLATE | {
        "model", "messages", "max_completion_tokens", "n", "logprobs", "top_logprobs",
        "response_format", "tools", "tool_choice", "parallel_tool_calls", "functions",
        "function_call", "user", "metadata", "store", "reasoning_effort", "modalities",
        "service_tier", "prediction", "prompt_cache_key", "safety_identifier", "verbosity",
    },
    b"/v1/completions": _SAMPLING | {
        "model", "prompt", "suffix", "echo", "n", "best_of", "logprobs", "user",
        "response_format",
    },
    b"/v1/embeddings": frozenset({"model", "input", "encoding_format", "dimensions", "user"}),
    b"/v1/responses": _SAMPLING | _CHAT_TEMPLATE | {
        "model", "input", "instructions", "max_output_tokens", "tools", "tool_choice",
        "parallel_tool_calls", "text", "reasoning", "truncation", "user", "metadata", "store",
        "include", "previous_response_id", "top_logprobs", "service_tier", "prompt_cache_key",
        "safety_identifier", "max_tool_calls",
    },
    b"/v1/responses/input_tokens": frozenset({
        "model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls",
        "text", "reasoning", "truncation", "previous_response_id",
    }),
    b"/v1/messages": _SAMPLING | _CHAT_TEMPLATE | {
        "model", "messages", "system", "stop_sequences", "tools", "tool_choice", "metadata",
        "thinking", "service_tier",
    },
    b"/v1/messages/count_tokens": frozenset({
        "model", "messages", "system", "tools", "tool_choice", "thinking",
    }),
    b"/v1/rerank": frozenset({"model", "query", "documents", "top_n", "return_documents"}),
    b"/tokenize": frozenset({"model", "content", "add_special", "parse_special",
                             "with_pieces"}),
    b"/detokenize": frozenset({"model", "tokens"}),
    b"/apply-template": frozenset({"model", "messages", "tools", "tool_choice",
                                   "chat_template_kwargs", "add_generation_prompt"}),
}
# Paths that evaluate a prompt in one slot: only these are checked against the context (an
# embeddings batch or a rerank evaluates each input on its own).
GENERATING = frozenset({b"/v1/chat/completions", b"/v1/completions", b"/v1/responses",
                         b"/v1/messages"})
# Fields whose text becomes the prompt: their string bytes bound its tokens from below.
_PROMPT_FIELDS = ("messages", "prompt", "input", "system", "instructions", "tools",
                  "functions", "documents", "query", "content", "suffix")


MAX_LORA = 64  # adapters a request may scale: more than any model loads


class Vetted(NamedTuple):
    """What vetting found: whether the body changed, and the prompt's text in bytes."""

    edited: bool
    prompt_bytes: int


# Keys whose values never become prompt text: media (a base64 image is not its bytes in
# tokens), ids, and the part types themselves.
_NOT_TEXT = frozenset({"image_url", "input_audio", "input_video", "video_url", "image",
                       "images", "source", "file", "type", "id", "tool_call_id",
                       "cache_control", "signature"})


def prompt_text_bytes(data: dict[str, Any]) -> int:
    """The prompt's text as the tokenizer will see it, or less: strings of the prompt fields
    without surrounding whitespace (templates trim it), media or ids. An array ``prompt``
    (``/v1/completions``) is that many prompts, each in its own slot: the longest counts."""
    total = 0
    for name in _PROMPT_FIELDS:
        value = data.get(name)
        if name == "prompt" and isinstance(value, list):
            total += max((text_bytes(item, True) for item in value), default=0)
        elif value is not None:
            total += text_bytes(value, True)
    return total


def check_fits(window: ContextWindow, data: dict[str, Any], prompt_bytes: int) -> None:
    """A 400 for a prompt that cannot fit the runner's context, decided without the runner:
    no token is longer than the vocabulary's longest, so a text of N bytes is at least
    N / longest tokens. A 30 MB prompt used to cost llama-server 39 s and 2.3 GB before it
    said as much. The window was worked out once, when the runner loaded; most prompts have
    fewer bytes than the window times its longest token and are not counted at all. Prompts
    between the bound and the window are left to llama-server, which tokenizes that much in
    milliseconds."""
    slot, longest = window.tokens, window.longest_token
    if slot <= 0 or longest <= 0 or prompt_bytes <= slot * longest:
        return
    text = prompt_text_bytes(data)
    at_least = -(-text // longest)
    if at_least > slot:
        raise APIError(400, f"the prompt is at least {at_least} tokens ({text} bytes of text), "
                       f"more than the {slot} tokens of context a request gets on this model",
                       param="messages" if "messages" in data else "prompt",
                       code="context_length_exceeded")


def _depth(value: object, limit: int) -> int:
    """Nesting depth of a JSON value, iteratively (a recursive walk is what a deep value
    attacks); stops counting once past ``limit``."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        if deepest > limit:
            return deepest
        stack.extend((child, level + 1) for child in children if isinstance(child, dict | list))
    return deepest


def schema_size(value: object) -> tuple[int, int]:
    """(bytes of its strings and object keys, entries of its widest object) for a JSON schema
    or tool list, iteratively. Keys count: a schema's property names are keys, and llama.cpp's
    schema-to-grammar converter is cubic in an object's optional properties (1,024 of them
    took it 2.3 s, 2,048 took 18.5 s, 20,000 hang it)."""
    size = widest = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            size += len(item)
        elif isinstance(item, dict):
            widest = max(widest, len(item))
            size += sum(len(key) for key in item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return size, widest


def text_bytes(value: object, trimmed: bool = False) -> int:
    """The UTF-8 bytes of every string inside a JSON value (keys of objects excluded): an
    upper bound of the prompt text it holds, cheap enough for every request. ``trimmed``: less
    each string's surrounding whitespace and the values of ``_NOT_TEXT`` keys, a lower bound
    of what the tokenizer will see."""
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if trimmed:
                item = item.strip()
            total += len(item) if item.isascii() else len(item.encode("utf-8", "replace"))
        elif isinstance(item, dict):
            stack.extend((v for k, v in item.items() if k not in _NOT_TEXT) if trimmed
                         else item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return total


def grammar_depth(grammar: str, limit: int) -> int:
    """How deeply a GBNF grammar nests its groups: ``(`` outside literals, character classes
    and comments. llama.cpp's parser recurses once per group, and 20,000 levels overflow its
    stack."""
    depth = deepest = 0
    i, n = 0, len(grammar)
    while i < n:
        c = grammar[i]
        if c == "(":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    return deepest
        elif c == ")":
            depth = max(depth - 1, 0)
        elif c in "\"[":
            close = '"' if c == '"' else "]"
            i += 1
            while i < n and grammar[i] != close:
                i += 2 if grammar[i] == "\\" else 1
        elif c == "#":
            newline = grammar.find("\n", i)
            i = n if newline < 0 else newline
        i += 1
    return deepest


class Allowlist:
    """The fields and bounds of :mod:`gateway.allowlist`, built once from the settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pass_unknown = settings.pass_unknown_fields
        self._image_hosts = frozenset(host.lower() for host in settings.image_url_hosts)
        self._checks: dict[str, Callable[[str, Any], None]] = {
            "grammar": self._grammar,
            "json_schema": self._schema,
            "response_format": self._schema,
            "chat_template_kwargs": self._schema,
            "n_probs": self._probs,
            "top_logprobs": self._probs,
            "logprobs": self._probs,
            "logit_bias": self._logit_bias,
            "stop": self._stop,
            "stop_sequences": self._stop,
            "samplers": self._samplers,
            "dry_sequence_breakers": self._breakers,
            "lora": self._lora,
            "repeat_last_n": self._last_n,
            "dry_penalty_last_n": self._last_n,
            "tools": self._tools,
            "functions": self._tools,
            "messages": self._messages,
            "input": self._messages,  # Responses' input items carry content parts too
            "documents": self._items,
            "content": self._items,
            "prompt": self._items,
        }

    # -- the checks -------------------------------------------------------------------------

    @staticmethod
    def _refuse(field: str, what: str, limit: int, setting: str) -> APIError:
        return APIError(400, f"'{field}' {what}; at most {limit} allowed (the server's "
                        f"SWITCHBOARD_{setting.upper()})", param=field, code="limit_exceeded")

    def _nesting(self, field: str, value: object) -> None:
        limit = self.settings.max_nesting
        depth = _depth(value, limit)
        if depth > limit:
            raise self._refuse(field, f"nests more than {limit} levels deep", limit,
                               "max_nesting")

    def _grammar(self, field: str, value: Any) -> None:
        if not isinstance(value, str):
            return  # llama-server refuses the type itself, cheaply
        limit = self.settings.max_grammar_bytes
        size = text_bytes(value)
        if size > limit:
            raise self._refuse(field, f"is {size} bytes", limit, "max_grammar_bytes")
        nesting = self.settings.max_nesting
        # Fewer groups than the bound cannot nest deeper than it: most grammars skip the scan.
        if value.count("(") > nesting and grammar_depth(value, nesting) > nesting:
            raise self._refuse(field, f"nests groups more than {nesting} deep", nesting,
                               "max_nesting")

    def _schema(self, field: str, value: Any) -> None:
        if isinstance(value, dict | list):
            self._nesting(field, value)
            self._sized(field, value, self.settings.max_grammar_bytes, "max_grammar_bytes")
        elif isinstance(value, str):
            self._grammar(field, value)

    def _sized(self, field: str, value: object, limit: int, setting: str) -> None:
        size, widest = schema_size(value)
        if size > limit:
            raise self._refuse(field, f"holds {size} bytes of text", limit, setting)
        properties = self.settings.max_schema_properties
        if widest > properties:
            raise self._refuse(field, f"has an object of {widest} entries", properties,
                               "max_schema_properties")

    def _last_n(self, field: str, value: Any) -> None:
        # llama.cpp allocates a ring buffer this long, per request: 2^31 was 8 GiB (16 for
        # DRY's two). -1 means the context, which is bounded already.
        limit = self.settings.max_last_n
        if isinstance(value, int) and not isinstance(value, bool) and value > limit:
            raise self._refuse(field, f"is {value}", limit, "max_last_n")

    def _probs(self, field: str, value: Any) -> None:
        limit = self.settings.max_probs
        if isinstance(value, int) and not isinstance(value, bool) and value > limit:
            raise self._refuse(field, f"is {value}", limit, "max_probs")

    def _logit_bias(self, field: str, value: Any) -> None:
        limit = self.settings.max_logit_bias
        if isinstance(value, dict | list) and len(value) > limit:
            raise self._refuse(field, f"has {len(value)} entries", limit, "max_logit_bias")
        self._nesting(field, value)
        # Entries may be text, which llama-server tokenizes: each as long as a stop string.
        longest = self.settings.max_stop_length
        if isinstance(value, dict):
            texts: list[Any] = list(value)
        elif isinstance(value, list):  # [[token or text, bias], ...]
            texts = [entry[0] for entry in value if isinstance(entry, list) and entry]
        else:
            texts = []
        for text in texts:
            if isinstance(text, str) and len(text) > longest:
                raise self._refuse(field, f"has a text of {len(text)} characters", longest,
                                   "max_stop_length")

    def _strings(self, field: str, value: Any, count: int, count_setting: str, size: int,
                 size_setting: str) -> None:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list):
            return
        if len(items) > count:
            raise self._refuse(field, f"has {len(items)} entries", count, count_setting)
        for item in items:
            if isinstance(item, str) and len(item) > size:
                raise self._refuse(field, f"has an entry of {len(item)} characters", size,
                                   size_setting)
            if not isinstance(item, str):
                self._nesting(field, item)

    def _stop(self, field: str, value: Any) -> None:
        s = self.settings
        self._strings(field, value, s.max_stop, "max_stop", s.max_stop_length, "max_stop_length")

    def _samplers(self, field: str, value: Any) -> None:
        s = self.settings
        if isinstance(value, str):  # llama.cpp's one-letter form, e.g. "dkypmxt"
            value = list(value)
        self._strings(field, value, s.max_samplers, "max_samplers", 64, "max_samplers")

    def _breakers(self, field: str, value: Any) -> None:
        s = self.settings
        self._strings(field, value, s.max_dry_breakers, "max_dry_breakers",
                      s.max_dry_breaker_length, "max_dry_breaker_length")

    def _tools(self, field: str, value: Any) -> None:
        s = self.settings
        if isinstance(value, list) and len(value) > s.max_tools:
            raise self._refuse(field, f"has {len(value)} entries", s.max_tools, "max_tools")
        self._nesting(field, value)
        self._sized(field, value, s.max_tools_bytes, "max_tools_bytes")

    def _messages(self, field: str, value: Any) -> None:
        self._items(field, value)
        if isinstance(value, list):
            for message in value:
                content = message.get("content") if isinstance(message, dict) else None
                if isinstance(content, list):
                    self._media(field, content)

    def _media(self, field: str, parts: list[Any]) -> None:
        """A runner with a projector downloads an http(s) media URL itself, from wherever a
        client points it (any internal address): only inline ``data:`` URLs reach it. An image
        URL on a host of ``image_url_hosts`` passes, for :mod:`gateway.images` to fetch and
        inline. The families name the URL differently: OpenAI's ``image_url.url`` and
        ``input_audio.data``, Responses' ``image_url`` string, Anthropic's ``source.url``."""
        hosts = self._image_hosts
        for part in parts:
            if not isinstance(part, dict):
                continue
            for kind in ("image_url", "input_audio", "input_video", "video_url", "source"):
                media = part.get(kind)
                url = media.get("url", media.get("data")) if isinstance(media, dict) else media
                if not isinstance(url, str) or not url.startswith(("http", "file:")):
                    continue
                if kind in ("image_url", "source") and url.startswith("http") and \
                        (urlsplit(url).hostname or "").lower() in hosts:
                    continue
                raise APIError(400, f"'{field}' has media by URL ({kind}): send it inline "
                               "as a data: URL", param=field, code="unsupported_value")

    @staticmethod
    def _lora(field: str, value: Any) -> None:
        if not isinstance(value, list) or len(value) > MAX_LORA or not all(
                isinstance(entry, dict) and set(entry) == {"id", "scale"}
                and isinstance(entry["id"], int) and not isinstance(entry["id"], bool)
                and entry["id"] >= 0 and isinstance(entry["scale"], int | float)
                and not isinstance(entry["scale"], bool)
                and math.isfinite(entry["scale"]) for entry in value):
            raise APIError(400, f"'lora' must be a list of up to {MAX_LORA} {{id, scale}} "
                           "objects: an adapter's id and a finite scale", param=field)

    def _items(self, field: str, value: Any) -> None:
        limit = self.settings.max_messages
        if isinstance(value, list) and len(value) > limit and not (
                field in ("prompt", "input", "content") and all(
                    isinstance(v, int) for v in value)):  # a token array is one prompt
            raise self._refuse(field, f"has {len(value)} entries", limit, "max_messages")
        if isinstance(value, dict | list):
            self._nesting(field, value)

    # -- the door ---------------------------------------------------------------------------

    def vet(self, path: bytes, data: dict[str, Any]) -> Vetted:
        """Drop what ``path`` does not take and check the bounds of what it does, in place;
        raises :class:`APIError` (400) for a field over its bound."""
        allowed = FIELDS.get(path)
        edited = False
        if allowed is not None and not self.pass_unknown:
            unknown = [name for name in data if name not in allowed]
            for name in unknown:
                del data[name]
            edited = bool(unknown)
        checks = self._checks
        prompt = 0
        for name, value in data.items():
            check = checks.get(name)
            if check is not None:
                check(name, value)
            elif isinstance(value, dict | list):
                self._nesting(name, value)  # whatever it is, it must not be deep
        if path in GENERATING:
            for name in _PROMPT_FIELDS:
                value = data.get(name)
                if value is not None:
                    prompt += text_bytes(value)
        return Vetted(edited, prompt)
