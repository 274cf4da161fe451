"""One llama-server child process, as an explicit state machine.

    stopped ──start()──▶ starting ──/health 200──▶ ready ──stop()──▶ stopping ──▶ stopped
                             │                       │
                             └──exit / timeout──▶ failed ◀──unexpected exit──┘

The child listens on 127.0.0.1 at an ephemeral port and accepts only its own random API key.
It lives in its own process group (so a stop reaches anything it spawned) and is sent SIGKILL
by the kernel if the gateway dies (``PR_SET_PDEATHSIG``), so a ``kill -9`` of the gateway
leaves no runner behind. Every exit is reaped by the watcher task.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import enum
import logging
import os
import secrets
import signal
import socket
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from runner.errors import RunnerStartError
from runner.locks import hold_shared, release
from runner.modes import RunnerMode

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_STDERR_LINES = 40
_HEALTH_POLL = 0.05
_HEALTH_POLL_LATER = 0.25
_FAST_POLLING = 0.5  # seconds of _HEALTH_POLL before _HEALTH_POLL_LATER
_READY_POLL = 0.005
# llama-server prints this once /health answers 200, in every version we know. Not
# "listening": older versions print that before they load, the current one after.
_LOADED = ("model loaded",)
_HEALTH_TIMEOUT = 2.0
_PORT_ATTEMPTS = 3


class RunnerState(enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    FAILED = "failed"


_ALLOWED: dict[RunnerState, frozenset[RunnerState]] = {
    RunnerState.STOPPED: frozenset({RunnerState.STARTING}),
    RunnerState.STARTING: frozenset(
        {RunnerState.READY, RunnerState.FAILED, RunnerState.STOPPING}
    ),
    RunnerState.READY: frozenset({RunnerState.STOPPING, RunnerState.FAILED}),
    RunnerState.STOPPING: frozenset({RunnerState.STOPPED}),
    RunnerState.FAILED: frozenset(),
}


def loopback_client(timeout: float) -> httpx.AsyncClient:
    """A client for a runner's plain-HTTP loopback port. httpx builds a TLS context with the CA
    bundle for every client by default: 17 to 42 ms of blocked event loop here, on every cold
    start and every health check, for a context plain HTTP never uses."""
    return httpx.AsyncClient(timeout=timeout, verify=False)


@dataclass(frozen=True)
class LaunchSpec:
    """Everything that shapes a runner; two requests with equal specs can share one."""

    model: str
    model_path: Path
    ctx_size: int
    parallel: int
    gpu_layers: int | str = "auto"
    threads: int | None = None
    mode: RunnerMode = RunnerMode.CHAT
    extra_args: tuple[str, ...] = ()
    pooling: str | None = None  # for embeddings when the GGUF names none
    chat_template: Path | None = None  # a Jinja file replacing the GGUF's own
    sampling: tuple[str, ...] = ()  # the model's default sampling flags (runner.model_defaults)
    projector: Path | None = None  # --mmproj
    draft: Path | None = None  # --model-draft
    adapters: tuple[tuple[Path, float], ...] = ()  # --lora-scaled, each with its scale
    swa_full: bool = False  # --swa-full: what cache reuse and restore need on Gemma 2/3
    cache_reuse: int = 0  # --cache-reuse chunk in tokens; 0: off
    slot_save_path: Path | None = None  # --slot-save-path: where its slots' caches are saved


def build_argv(binary: Path, spec: LaunchSpec, port: int) -> list[str]:
    """The llama-server command line; flags appear only when they carry a choice."""
    argv = [
        str(binary),
        "--model", str(spec.model_path),
        "--alias", spec.model,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--ctx-size", str(spec.ctx_size),
        "--parallel", str(spec.parallel),

        # One HTTP thread per slot, one for a request waiting on a slot, one for /health; the
        # relay holds at most parallel + 1 connections (why: gateway.upstream.UpstreamPool).
        "--threads-http", str(http_threads(spec.parallel)),
    ]
    if spec.chat_template is not None:
        argv += ["--chat-template-file", str(spec.chat_template)]
    # Jinja templates (the GGUF's own, or a file) are what tools and response formats need.
    # llama.cpp enables Jinja by default and then reads '--chat-template gemma' as the
    # literal template text "gemma", making every prompt that one word; a built-in template
    # name therefore needs --no-jinja.
    argv.append("--no-jinja" if _named_builtin_template(spec.extra_args) else "--jinja")
    if spec.gpu_layers != "auto":
        argv += ["--n-gpu-layers", str(spec.gpu_layers)]
    if spec.threads is not None:
        argv += ["--threads", str(spec.threads)]
    if spec.mode is RunnerMode.EMBEDDINGS:
        argv.append("--embeddings")
        if spec.pooling is not None and "--pooling" not in spec.extra_args:
            argv += ["--pooling", spec.pooling]
    elif spec.mode is RunnerMode.RERANKING:
        argv.append("--reranking")
    if spec.mode is RunnerMode.CHAT:  # what only generation uses
        argv += spec.sampling
        if spec.projector is not None:
            argv += ["--mmproj", str(spec.projector)]
        if spec.draft is not None:
            argv += ["--model-draft", str(spec.draft)]
        if spec.swa_full and "--swa-full" not in spec.extra_args:
            argv.append("--swa-full")
        if spec.cache_reuse and "--cache-reuse" not in spec.extra_args:
            argv += ["--cache-reuse", str(spec.cache_reuse)]
        if spec.slot_save_path is not None:
            argv += ["--slot-save-path", str(spec.slot_save_path)]
    if spec.adapters:
        argv += ["--lora-scaled", ",".join(f"{path}:{scale:g}" for path, scale in spec.adapters)]
    argv += spec.extra_args
    return argv


def _named_builtin_template(args: tuple[str, ...]) -> bool:
    if "--chat-template" not in args:
        return False
    index = args.index("--chat-template") + 1
    return index < len(args) and "{" not in args[index]


def http_threads(parallel: int) -> int:
    return parallel + 2


def relay_connections(parallel: int) -> int:
    """Connections the relay may hold to a runner: all its HTTP threads but one for /health."""
    return http_threads(parallel) - 1


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> Callable[[], None]:
    """A preexec hook: SIGKILL this child when the gateway dies, even by ``kill -9``."""
    libc = ctypes.CDLL(None, use_errno=True)  # loaded before fork: nothing to load in the child
    parent = os.getpid()

    def hook() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return hook


class RunnerProcess:
    """A llama-server child for one :class:`LaunchSpec`; not restartable once stopped."""

    def __init__(
        self,
        spec: LaunchSpec,
        binary: Path,
        variant: str,
        env: dict[str, str],
        load_timeout: float,
        stop_timeout: float,
        on_exit: Callable[[RunnerProcess], None] | None = None,
    ) -> None:
        self.spec = spec
        self.binary = binary
        self.variant = variant
        self.api_key = secrets.token_urlsafe(24)
        self.port = 0
        self.load_seconds = 0.0
        self.started_at = 0.0
        self.output: deque[str] = deque(maxlen=_STDERR_LINES)
        self.on_line: Callable[[str], None] | None = None  # each output line, as it comes
        self._env = {**env, "LLAMA_API_KEY": self.api_key}
        self._load_timeout = load_timeout
        self._stop_timeout = stop_timeout
        self._on_exit = on_exit
        self._state = RunnerState.STOPPED
        self._proc: asyncio.subprocess.Process | None = None
        self._exited: asyncio.Future[int] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._hold: int | None = None  # shared lock on the model file while a child runs
        self._loaded: asyncio.Future[None] | None = None  # its output said the model loaded

    @property
    def state(self) -> RunnerState:
        return self._state

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode if self._proc is not None else None

    def rss_bytes(self) -> int | None:
        """Resident memory of the live child, from /proc; None once it has exited."""
        pid = self.pid
        if pid is None or self.returncode is not None:
            return None
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return None

    def _transition(self, new: RunnerState) -> None:
        if new not in _ALLOWED[self._state]:
            raise RuntimeError(f"runner {self.spec.model}: {self._state.value} -> {new.value}")
        self._state = new

    async def start(self) -> None:
        """Spawn and wait for /health; raises :class:`RunnerStartError` with the child's output."""
        self._transition(RunnerState.STARTING)
        started = time.monotonic()
        for attempt in range(_PORT_ATTEMPTS):
            self.port = free_port()
            await self._spawn()
            try:
                await self._wait_healthy(started + self._load_timeout)
            except RunnerStartError:
                # Another process can take the port between our probe and the child's bind;
                # that one failure is worth another port, anything else is not.
                if attempt + 1 < _PORT_ATTEMPTS and self._lost_port_race():
                    log.info("runner %s: port %d taken, retrying", self.spec.model, self.port)
                    self.output.clear()
                    continue
                self._fail()
                raise
            break
        self.load_seconds = time.monotonic() - started
        self.started_at = time.time()
        self._transition(RunnerState.READY)
        log.info(
            "runner start: model=%s pid=%s variant=%s port=%d load=%.2fs",
            self.spec.model, self.pid, self.variant, self.port, self.load_seconds,
        )

    def _lost_port_race(self) -> bool:
        return self.returncode is not None and any(
            "bind" in line.lower() or "address already in use" in line.lower()
            for line in self.output
        )

    async def _spawn(self) -> None:
        argv = build_argv(self.binary, self.spec, self.port)
        log.debug("runner %s: exec %s", self.spec.model, " ".join(argv))
        # Held until the child is reaped: `switchboard rm` refuses a model file under a lock.
        if self._hold is None:
            self._hold = hold_shared(self.spec.model_path)
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=self._env,
                start_new_session=True,
                preexec_fn=_die_with_parent(),
            )
        except OSError as exc:
            release(self._hold)
            self._hold = None
            self._fail()
            raise RunnerStartError(f"cannot execute {argv[0]}: {exc}") from exc
        loop = asyncio.get_running_loop()
        self._exited = loop.create_future()
        self._loaded = loop.create_future()
        self._spawn_task(self._pump_output(self._proc))
        self._spawn_task(self._watch(self._proc, self._exited))

    def _spawn_task(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _pump_output(self, proc: asyncio.subprocess.Process) -> None:
        # Drained to EOF always: a full pipe would block the child mid-generation.
        assert proc.stdout is not None
        name = self.spec.model
        while True:
            try:
                raw = await proc.stdout.readline()
            except ValueError:  # a line over the stream limit; keep draining
                raw = await proc.stdout.read(1 << 16)
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip()
            self.output.append(line)
            if self.on_line is not None:
                self.on_line(line)
            loaded = self._loaded
            if loaded is not None and not loaded.done() and any(
                marker in line for marker in _LOADED
            ):
                loaded.set_result(None)
            log.debug("[%s] %s", name, line)

    async def _watch(self, proc: asyncio.subprocess.Process, exited: asyncio.Future[int]) -> None:
        code = await proc.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything it left in its group
        if proc is self._proc:
            release(self._hold)
            self._hold = None
        if not exited.done():
            exited.set_result(code)
        if self._state is RunnerState.READY:
            log.warning(
                "runner exit: model=%s pid=%d code=%d (unexpected)%s",
                self.spec.model, proc.pid, code, self._last_lines(),
            )
            self._fail()
            if self._on_exit is not None:
                self._on_exit(self)

    async def _wait_healthy(self, deadline: float) -> None:
        assert self._exited is not None
        url = f"{self.base_url}/health"
        began = time.monotonic()
        async with loopback_client(1.0) as client:
            while True:
                if self._exited.done():
                    code = self._exited.result()
                    raise RunnerStartError(
                        f"llama-server for {self.spec.model} exited with code {code} while "
                        f"loading{self._last_lines()}"
                    )
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get(url)).status_code == 200:
                        return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    await self._kill()
                    raise RunnerStartError(
                        f"llama-server for {self.spec.model} did not become healthy within "
                        f"{self._load_timeout:.0f}s{self._last_lines()}"
                    )
                # Checked at once and then every 5 ms from the moment the child says the
                # model loaded, which saves a cold start most of a poll interval. Until then
                # polled every 50 ms for half a second (a child that never says it), then
                # every 250 ms: each poll is a connection and a request, and 20 a second
                # were 30 ms of CPU per load taken from llama-server's on two cores.
                hint = self._loaded
                waits: set[asyncio.Future[Any]] = {self._exited}
                if hint is not None and not hint.done():
                    waits.add(hint)
                if hint is not None and hint.done():
                    poll = _READY_POLL
                elif time.monotonic() - began < _FAST_POLLING:
                    poll = _HEALTH_POLL
                else:
                    poll = _HEALTH_POLL_LATER
                # FIRST_COMPLETED: asyncio.wait's default waits for all, which made the
                # hint wait out the rest of a poll (a cold start 25 ms slower on average).
                await asyncio.wait(waits, timeout=min(poll, remaining),
                                   return_when=asyncio.FIRST_COMPLETED)

    def _fail(self) -> None:
        # Failure is reachable from any live state, so it bypasses the transition table.
        self._state = RunnerState.FAILED

    def _last_lines(self, count: int = 12) -> str:
        lines = list(self.output)[-count:]
        return (":\n  " + "\n  ".join(lines)) if lines else ""

    def _signal(self, sig: signal.Signals) -> None:
        if self._proc is None or self._proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    async def _kill(self) -> None:
        self._signal(signal.SIGKILL)
        if self._exited is not None:
            await asyncio.wait({self._exited}, timeout=5.0)

    async def check_health(self) -> bool:
        """Whether /health answers 200 within a couple of seconds."""
        if self._state is not RunnerState.READY:
            return False
        try:
            async with loopback_client(_HEALTH_TIMEOUT) as client:
                return (await client.get(f"{self.base_url}/health")).status_code == 200
        except httpx.HTTPError:
            return False

    async def stop(self, force: bool = False) -> None:
        """SIGTERM, then SIGKILL after the grace period (at once if ``force``: a hung child
        would not act on SIGTERM); returns once the child is reaped."""
        if self._state in (RunnerState.STOPPING, RunnerState.STOPPED):
            if self._exited is not None:
                await asyncio.wait({self._exited}, timeout=self._stop_timeout + 5.0)
            return
        clean = self._state is not RunnerState.FAILED
        if clean:
            self._transition(RunnerState.STOPPING)
        uptime = time.time() - self.started_at if self.started_at else 0.0
        if self._exited is not None and not self._exited.done():
            self._signal(signal.SIGKILL if force else signal.SIGTERM)
            done, _ = await asyncio.wait({self._exited}, timeout=self._stop_timeout)
            if not done:
                log.warning("runner %s: no exit %.0fs after SIGTERM, killing",
                            self.spec.model, self._stop_timeout)
                await self._kill()
        if clean:
            self._transition(RunnerState.STOPPED)
        for task in list(self._tasks):
            if not task.done():
                with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(task, timeout=1.0)
        log.info("runner stop: model=%s pid=%s variant=%s uptime=%.1fs",
                 self.spec.model, self.pid, self.variant, uptime)
