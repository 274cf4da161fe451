"""switchboard: an OpenAI-, Anthropic- and Ollama-compatible gateway that runs llama.cpp's
llama-server per model."""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import signal
import socket
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

from gateway import backends_cli, create_cli, run_cli
from gateway.client import client_headers, client_settings, error_message, server_url
from gateway.drain import DrainState
from gateway.store_cli import add_commands
from runner.cluster_config import cluster_config, is_loopback
from runner.settings import (
    DEFAULT_MODEL,
    Settings,
    SettingsError,
    config_path,
    describe,
    load_settings,
)
from runner.units import format_bytes


def _setup_logging(level: str, form: str = "text") -> None:
    from gateway.log_escape import EscapingFormatter
    from gateway.log_json import JsonLineFormatter

    # Escaped centrally: client-controlled text (paths, model names, pull names) reaches many
    # log lines, and one forgotten call site would let a "%0a" forge a line (issue 18).
    # JSON's own escaping does the same for json lines.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLineFormatter() if form == "json" else EscapingFormatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    # httpx logs every request at INFO; the health polls of a loading runner would flood.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))


async def _serve(settings: Settings, listener: int, config_note: str | None = None) -> None:
    """Serve until SIGTERM, SIGINT or SIGHUP, each of which drains: new requests get 503,
    those in flight get ``shutdown_grace``; a second signal stops at once. SIGHUP drains
    rather than reloads the config: a supervisor restarts the process to reload."""
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    from gateway.app import create_app
    from gateway.direct_write import ExposeServerSend

    config = Config()
    config.bind = [f"fd://{listener}"]  # hypercorn owns (and closes) the bound socket
    config.accesslog = None  # gateway.access_log writes one line per request
    config.include_server_header = False
    config.include_date_header = False  # gateway.access_log adds it, formatted once a second
    config.keep_alive_max_requests = 1 << 30  # a client's pooled connection is no burden
    # Idle connections, and request heads sent slowly, close after keep_alive_timeout: its
    # timer runs until a whole head is in. read_timeout stays unset: it bounds every read, so
    # it would cut a client waiting quietly for a long answer too. Slow bodies are bounded by
    # gateway.body_limit (SWITCHBOARD_BODY_TIMEOUT), unread answers by the relay.
    config.keep_alive_timeout = 5
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = settings.stop_timeout
    app = create_app(settings, config_note=config_note)
    drain: DrainState = app.state.drain
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    draining: list[asyncio.Task[None]] = []

    async def drain_then_stop() -> None:
        log = logging.getLogger(__name__)
        log.info("draining: new requests get 503; %d in flight get up to %gs", drain.active,
                 settings.shutdown_grace)
        if not await drain.wait_idle(settings.shutdown_grace):
            log.warning("shutdown grace over with %d requests in flight", drain.active)
        stop.set()

    def on_signal() -> None:
        if drain.draining:  # a second signal: stop now
            stop.set()
            return
        drain.start()
        draining.append(asyncio.create_task(drain_then_stop()))

    # SIGHUP too: without a handler it kills at once, cutting streams (a closed terminal or
    # `kill -HUP` by a supervisor expecting a reload sends it).
    signals = [signal.SIGTERM, signal.SIGINT]
    # Under nohup SIGHUP is ignored, and must stay so: a closed terminal is no shutdown.
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        signals.append(signal.SIGHUP)
    for sig in signals:
        loop.add_signal_handler(sig, on_signal)
    await serve(ExposeServerSend(app), config,  # type: ignore[arg-type]
                shutdown_trigger=stop.wait)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvloop

    settings = load_settings(args.config, host=args.host, port=args.port,
                             cluster=args.cluster)
    _setup_logging(settings.log_level, settings.log_format)
    if not settings.api_keys and not is_loopback(settings.host) and not args.insecure:
        print(f"serve: refusing to listen on {settings.host} without API keys: set "
              "SWITCHBOARD_API_KEYS (or api_keys_file), or pass --insecure", file=sys.stderr)
        return 2
    try:
        cluster_config(settings)  # a fleet setting that cannot work: one line, before binding
    except SettingsError as exc:
        print(f"serve: {exc}", file=sys.stderr)
        return 2
    # Bound here, before anything starts: a taken port is one clear line, not a traceback
    # after the runners were already extracted.
    try:
        listener = socket.create_server((settings.host, settings.port))
    except OSError as exc:
        hint = (" (another switchboard? `switchboard ps` asks it; or choose --port / "
                "SWITCHBOARD_PORT)" if exc.errno == errno.EADDRINUSE else "")
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        print(f"serve: cannot listen on {settings.host}:{settings.port}: {reason}{hint}",
              file=sys.stderr)
        return 1
    found = config_path(args.config)
    config_note = str(found.resolve()) if found is not None else (
        "none found (defaults and SWITCHBOARD_* only; looked for ./configs/switchboard.yaml, "
        "$SWITCHBOARD_HOME/switchboard.yaml and ~/.config/switchboard/switchboard.yaml)")
    try:
        uvloop.run(_serve(settings, listener.detach(), config_note))
    except Exception as exc:
        # The lifespan's extraction failed: Hypercorn reports it as a LifespanFailureError
        # holding Starlette's traceback text, raised while handling ours, so ours is found
        # down the chain and said in one line.
        cause = _payload_error(exc)
        if cause is None:
            raise
        print(f"serve: {cause}", file=sys.stderr)
        return 1
    return 0


def _payload_error(exc: BaseException | None) -> BaseException | None:
    from runner.payloads import PayloadError

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, PayloadError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def cmd_build_runners(args: argparse.Namespace) -> int:
    from rich.console import Console

    from gateway.build_progress import BuildProgress
    from runner.build import DEFAULT_VARIANTS, BuildError, build_runners

    settings = load_settings(args.config)
    _setup_logging(settings.log_level, settings.log_format)
    try:
        with BuildProgress(Console(stderr=True)) as progress:
            paths = build_runners(settings.cache_dir, args.variant or list(DEFAULT_VARIANTS),
                                  jobs=args.jobs, force=args.force, progress=progress)
    except BuildError as exc:
        print(f"build-runners: {exc}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


def _get_json(settings: Settings, command: str, path: str) -> Any | None:
    """GET ``path`` from the running server; None (said on stderr) when that fails."""
    import httpx

    try:
        response = httpx.get(f"{server_url(settings)}{path}", timeout=10,
                             headers=client_headers(settings))
    except httpx.HTTPError as exc:
        print(f"{command}: cannot reach switchboard at {server_url(settings)}: {exc}",
              file=sys.stderr)
        return None
    if response.status_code != 200:
        print(f"{command}: {error_message(response)}", file=sys.stderr)
        return None
    return response.json()


def from_now(iso: str, now: float | None = None) -> str:
    """'4 minutes from now', as Ollama's ps says when a model unloads."""
    import datetime as dt
    import time

    try:
        seconds = dt.datetime.fromisoformat(iso).timestamp() - (now or time.time())
    except ValueError:
        return iso
    if seconds < 1:
        return "Less than a second from now" if seconds > -1 else "now"
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds >= size:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count != 1 else ''} from now"
    return "now"


def cmd_ps(args: argparse.Namespace) -> int:
    answer = _get_json(client_settings(args), "ps", "/api/ps")
    if answer is None:
        return 1
    fleet = any(m.get("node") for m in answer["models"])  # a NODE column in a fleet only
    node_column = f"{'NODE':12} " if fleet else ""
    print(f"{'MODEL':24} {node_column}{'MODE':10} {'PID':>8} {'VARIANT':10} "
          f"{'CTX':>6} {'BUSY':>4} {'RSS':>9}  UNTIL")
    for m in answer["models"]:
        rss = m["memory"]["actual_bytes"]
        until = "busy" if m["in_flight"] else (
            from_now(m["expires_at"]) if m["expires_at"] else "forever")
        node = f"{m.get('node') or '-':12} " if fleet else ""
        print(f"{m['model']:24} {node}{m['mode']:10} {m['pid'] or '-':>8} {m['variant']:10} "
              f"{m['ctx_size']:>6} {m['in_flight']:>4} "
              f"{f'{rss / 2**20:.0f} MiB' if rss else '-':>9}  {until}")
    return 0


def cmd_nodes(args: argparse.Namespace) -> int:
    answer = _get_json(client_settings(args), "nodes", "/api/nodes")
    if answer is None:
        return 1
    print(f"{'NODE':20} {'URL':28} {'STATE':17} {'VERSION':9} {'MODELS':>6} {'BUSY':>9} "
          f"{'QUEUE':>5}  RAM FREE")
    for n in answer["nodes"]:
        busy = sum(r["busy"] for r in n["runners"])
        slots = sum(r["slots"] for r in n["runners"])
        free = n["memory"].get("ram_available")
        print(f"{n['name']:20} {n['url']:28} {n['state']:17} {n['version']:9} "
              f"{len(n['models']):>6} {f'{busy}/{slots}':>9} {n['queue_depth']:>5}  "
              f"{format_bytes(free) if free is not None else '-'}")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    import httpx

    settings = client_settings(args)
    try:
        response = httpx.post(f"{server_url(settings)}/api/unload", json={"model": args.model},
                              timeout=settings.stop_timeout + 15,
                              headers=client_headers(settings))
    except httpx.HTTPError as exc:
        print(f"stop: cannot reach switchboard at {server_url(settings)}: {exc}",
              file=sys.stderr)
        return 1
    if response.status_code != 200:
        print(f"stop: {error_message(response)}", file=sys.stderr)
        return 1
    print(f"{args.model}: {'unloaded' if response.json()['unloaded'] else 'was not loaded'}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from gateway import generated_docs

    if args.markdown:
        print(generated_docs.settings_markdown())
    elif args.yaml:
        print(generated_docs.settings_yaml())
    else:
        for _name, env, default, doc in describe():
            print(f"{env:34} {default or '(empty)':24} {doc}")
    return 0


def cmd_help(args: argparse.Namespace) -> int:
    from gateway import generated_docs

    print(generated_docs.commands_markdown(build_parser()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="switchboard", description=__doc__)
    parser.add_argument("--version", action="version",
                        version=f"switchboard {version('switchboard')}")
    parser.add_argument("--config", type=Path, help="YAML settings file")
    # Also accepted after the subcommand (`switchboard serve --config x.yaml`); SUPPRESS keeps
    # a subcommand without it from resetting the top-level value.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=argparse.SUPPRESS,
                        help="YAML settings file")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve the OpenAI API", parents=[common])
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--cluster", metavar="NATS_URL",
                       help="join a fleet through this NATS server (nats://HOST:PORT)")
    serve.add_argument("--insecure", action="store_true",
                       help="allow a non-loopback address without API keys")
    serve.set_defaults(func=cmd_serve)

    build = sub.add_parser("build-runners", help="compile llama-server payloads", parents=[common])
    build.add_argument("--variant", action="append",
                       help="cpu, cpu_avx2 or cuda (repeatable; default: cpu and cpu_avx2)")
    build.add_argument("--jobs", type=int, help="parallel compile jobs (default: all cores)")
    build.add_argument("--force", action="store_true", help="rebuild even if cached")
    build.set_defaults(func=cmd_build_runners)

    add_commands(sub, common, DEFAULT_MODEL)
    create_cli.add_commands(sub, common)
    backends_cli.add_commands(sub, common)

    # The verbs that talk to a running server take its URL (or SWITCHBOARD_URL).
    client = argparse.ArgumentParser(add_help=False)
    client.add_argument("--url", help="the server (default: SWITCHBOARD_URL, else this "
                        "machine's from its host and port)")
    ps = sub.add_parser("ps", help="list the models a running server has loaded",
                        parents=[common, client])
    ps.set_defaults(func=cmd_ps)
    nodes = sub.add_parser("nodes", help="list the nodes of the fleet a running server is in",
                           parents=[common, client])
    nodes.set_defaults(func=cmd_nodes)

    stop = sub.add_parser("stop", help="unload a model from a running server",
                          parents=[common, client])
    stop.add_argument("model", metavar="MODEL")
    stop.set_defaults(func=cmd_stop)
    run_cli.add_commands(sub, common, client)

    config = sub.add_parser("config", help="list every setting with its default", parents=[common])
    shape = config.add_mutually_exclusive_group()
    shape.add_argument("--markdown", action="store_true", help="as the README's table")
    shape.add_argument("--yaml", action="store_true", help="as commented YAML")
    config.set_defaults(func=cmd_config)

    commands = sub.add_parser("commands", help="list every command (markdown)", parents=[common])
    commands.set_defaults(func=cmd_help)

    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SettingsError as exc:
        print(f"switchboard: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # `switchboard config | head`: the reader left; say nothing more (Python's advice:
        # point stdout at devnull so the interpreter's final flush does not raise again).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
