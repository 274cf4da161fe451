"""The ``switchboard`` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from runner.settings import DEFAULT_MODEL, Settings, SettingsError, describe, load_settings


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # httpx logs every request at INFO; the health polls of a loading runner would flood.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))


async def _serve(settings: Settings) -> None:
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    from gateway.app import create_app

    config = Config()
    config.bind = [f"{settings.host}:{settings.port}"]
    config.accesslog = None  # gateway.access_log writes one line per request
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = settings.stop_timeout
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await serve(create_app(settings), config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]


def cmd_serve(args: argparse.Namespace) -> int:
    import uvloop

    settings = load_settings(args.config, host=args.host, port=args.port)
    _setup_logging(settings.log_level)
    logging.getLogger(__name__).info(
        "switchboard serving on http://%s:%d/v1 (models: %s)",
        settings.host, settings.port, ", ".join(settings.models),
    )
    uvloop.run(_serve(settings))
    return 0


def cmd_build_runners(args: argparse.Namespace) -> int:
    from runner.build import DEFAULT_VARIANTS, BuildError, build_runners

    settings = load_settings(args.config)
    _setup_logging(settings.log_level)
    try:
        paths = build_runners(settings.cache_dir, args.variant or list(DEFAULT_VARIANTS),
                              jobs=args.jobs, force=args.force)
    except BuildError as exc:
        print(f"build-runners: {exc}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    from runner.models import ModelSourceError, resolve_source

    settings = load_settings(args.config)
    _setup_logging(settings.log_level)
    resolved = settings.resolve_model(args.model)
    if resolved is None:
        print(f"pull: unknown model {args.model!r}", file=sys.stderr)
        return 1
    try:
        path = resolve_source(resolved[1].source, settings.home)
    except ModelSourceError as exc:
        print(f"pull: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    for env, default, doc in describe():
        print(f"{env:34} {default:28} {doc}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="switchboard", description=__doc__)
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
    serve.set_defaults(func=cmd_serve)

    build = sub.add_parser("build-runners", help="compile llama-server payloads", parents=[common])
    build.add_argument("--variant", action="append",
                       help="cpu, cpu_avx2 or cuda (repeatable; default: cpu and cpu_avx2)")
    build.add_argument("--jobs", type=int, help="parallel compile jobs (default: all cores)")
    build.add_argument("--force", action="store_true", help="rebuild even if cached")
    build.set_defaults(func=cmd_build_runners)

    pull = sub.add_parser("pull", help="fetch or assemble a model's GGUF", parents=[common])
    pull.add_argument("model", nargs="?", default=DEFAULT_MODEL)
    pull.set_defaults(func=cmd_pull)

    config = sub.add_parser("config", help="list every setting with its default", parents=[common])
    config.set_defaults(func=cmd_config)

    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SettingsError as exc:
        print(f"switchboard: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
