"""A model's own defaults, as an Ollama params layer or a config's ``options`` gives them, in
llama-server's terms.

Sampling defaults become llama-server flags: the server takes its command line's sampling
values as the defaults of every request, which the request's own fields override, on every
API (OpenAI, Anthropic, Responses, Ollama's translated ones) at no per-request cost. The two
options that shape a runner (``num_ctx``, ``num_gpu``) become its context and GPU layers.
What llama-server has no flag for (stop words, a system prompt, messages put before the
conversation) is added to a request that has none of its own, by the node that runs it
(:class:`RequestDefaults`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Ollama's option -> (llama-server flag, the JSON type it takes). Ollama's names, since they
# are what params layers and Modelfiles' PARAMETER lines use.
SAMPLING_FLAGS: dict[str, tuple[str, type]] = {
    "temperature": ("--temp", float),
    "top_k": ("--top-k", int),
    "top_p": ("--top-p", float),
    "min_p": ("--min-p", float),
    "typical_p": ("--typical", float),
    "repeat_penalty": ("--repeat-penalty", float),
    "repeat_last_n": ("--repeat-last-n", int),
    "presence_penalty": ("--presence-penalty", float),
    "frequency_penalty": ("--frequency-penalty", float),
    "seed": ("--seed", int),
    "mirostat": ("--mirostat", int),
    "mirostat_tau": ("--mirostat-ent", float),
    "mirostat_eta": ("--mirostat-lr", float),
    "num_predict": ("--n-predict", int),
    "num_keep": ("--keep", int),
    "num_batch": ("--batch-size", int),
    "num_thread": ("--threads", int),
}
SHAPE_OPTIONS: dict[str, type] = {"num_ctx": int, "num_gpu": int}
# Options Ollama takes that have no meaning for llama-server: accepted, and left alone, as
# Ollama itself ignores what a runner does not use.
IGNORED_OPTIONS = frozenset({"numa", "num_gqa", "low_vram", "f16_kv", "logits_all",
                             "vocab_only", "use_mmap", "use_mlock", "embedding_only",
                             "rope_frequency_base", "rope_frequency_scale", "penalize_newline",
                             "tfs_z", "num_gpu_layers", "main_gpu", "use_numa"})
KNOWN_OPTIONS = frozenset({*SAMPLING_FLAGS, *SHAPE_OPTIONS, "stop", *IGNORED_OPTIONS})
ROLES = frozenset({"system", "user", "assistant", "tool"})


def check_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` with each value of the type its option takes (an int for a float is
    fine, as JSON does not tell them apart); raises ValueError naming the first wrong one."""
    checked: dict[str, Any] = {}
    for name, value in options.items():
        if name in IGNORED_OPTIONS:
            raise ValueError(f"option {name!r} means nothing to llama-server (Ollama's own); "
                             "llama-server flags go in the model's args")
        if name not in KNOWN_OPTIONS:
            known = sorted(KNOWN_OPTIONS - IGNORED_OPTIONS)
            raise ValueError(f"unknown option {name!r}; known: {', '.join(known)}")
        if name == "stop":
            stops = [value] if isinstance(value, str) else value
            if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
                raise ValueError("option 'stop' must be a string or a list of strings")
            checked[name] = list(stops)
            continue
        kind = SAMPLING_FLAGS[name][1] if name in SAMPLING_FLAGS else SHAPE_OPTIONS.get(name)
        if kind is None:
            checked[name] = value
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or (
                kind is int and not float(value).is_integer()):
            wanted = "an integer" if kind is int else "a number"
            raise ValueError(f"option {name!r} must be {wanted}, not {value!r}")
        checked[name] = kind(value)
    return checked


def sampling_args(options: Mapping[str, Any]) -> tuple[str, ...]:
    """The llama-server flags that make ``options`` every request's defaults."""
    args: list[str] = []
    for name, (flag, kind) in SAMPLING_FLAGS.items():
        if name in options:
            value = kind(options[name])
            args += [flag, repr(value) if kind is float else str(value)]
    return tuple(args)


@dataclass(frozen=True)
class RequestDefaults:
    """What a request gets from its model when it says nothing of its own."""

    system: str | None = None
    messages: tuple[dict[str, Any], ...] = ()  # put before the conversation, after the system
    stop: tuple[str, ...] = ()
    adapters: int = 0  # LoRA adapters loaded with it: a request's own "lora" ids are below

    def __bool__(self) -> bool:  # whether there is anything to put into a request
        return bool(self.system or self.messages or self.stop)


NO_DEFAULTS = RequestDefaults()
