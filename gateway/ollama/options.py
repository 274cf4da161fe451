"""Ollama's request fields in llama-server's terms: ``options`` become sampling fields or
runner shape, ``format`` becomes ``response_format``.

Ollama ignores options it does not know (and logs them); so do we. A known option of the wrong
type is a 400, since silently sampling differently from what was asked is worse.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import APIError
from runner.service import RunnerMode, RunnerOptions

# Ollama option -> the llama-server request field with the same meaning.
_SAMPLING: dict[str, tuple[str, type | tuple[type, ...]]] = {
    "temperature": ("temperature", (int, float)),
    "top_p": ("top_p", (int, float)),
    "top_k": ("top_k", int),
    "min_p": ("min_p", (int, float)),
    "typical_p": ("typical_p", (int, float)),
    "repeat_penalty": ("repeat_penalty", (int, float)),
    "repeat_last_n": ("repeat_last_n", int),
    "presence_penalty": ("presence_penalty", (int, float)),
    "frequency_penalty": ("frequency_penalty", (int, float)),
    "seed": ("seed", int),
    "mirostat": ("mirostat", int),
    "mirostat_tau": ("mirostat_tau", (int, float)),
    "mirostat_eta": ("mirostat_eta", (int, float)),
    "num_keep": ("n_keep", int),
}
MAX_CTX = 1 << 22  # past any model's trained context; beyond it is a typo, not a wish


def _typed(options: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = options.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, kind):
        raise APIError(400, f"option '{name}' has the wrong type: {type(value).__name__}",
                       param=f"options.{name}")
    return value


def read_options(data: dict[str, Any]) -> dict[str, Any]:
    options = data.get("options")
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise APIError(400, "'options' must be an object", param="options")
    return options


def sampling_fields(options: dict[str, Any]) -> dict[str, Any]:
    """The llama-server request fields that ``options`` ask for."""
    fields: dict[str, Any] = {}
    for name, (target, kind) in _SAMPLING.items():
        value = _typed(options, name, kind)
        if value is not None:
            fields[target] = value
    predict = _typed(options, "num_predict", int)
    if predict is not None and predict > 0:  # -1 (no limit) and -2 (fill the context): unset
        fields["max_tokens"] = predict
    stop = options.get("stop")
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise APIError(400, "option 'stop' must be an array of strings", param="options.stop")
        fields["stop"] = stop
    return fields


def runner_options(options: dict[str, Any],
                   mode: RunnerMode = RunnerMode.CHAT) -> RunnerOptions:
    """The runner shape ``options`` ask for: ``num_ctx`` is the context, ``num_gpu`` layers."""
    ctx = _typed(options, "num_ctx", int)
    if ctx is not None and not 1 <= ctx <= MAX_CTX:
        raise APIError(400, f"option 'num_ctx' must be between 1 and {MAX_CTX}",
                       param="options.num_ctx")
    gpu = _typed(options, "num_gpu", int)
    if gpu is not None and gpu < 0:
        gpu = None  # Ollama's -1: as many as fit, which is what "auto" does
    return RunnerOptions(mode=mode, ctx_size=ctx, gpu_layers=gpu)


def response_format(value: object) -> dict[str, Any] | None:
    """Ollama's ``format`` ("json" or a JSON schema) as an OpenAI ``response_format``."""
    if value is None or value == "":
        return None
    if value == "json":
        return {"type": "json_object"}
    if isinstance(value, dict):
        return {"type": "json_schema", "json_schema": {"name": "response", "schema": value}}
    raise APIError(400, "'format' must be \"json\" or a JSON schema object", param="format")
