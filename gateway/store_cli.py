"""``switchboard pull | ls | rm | show``: the model store from the command line.

These work on the store directly (no server needed), as ``make serve`` pulls before it serves;
a running server sees a pulled model at once, and never loses a blob to ``rm`` while one of its
runners holds it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from runner.catalog import Catalog, open_store
from runner.errors import InvalidNameError, ModelSourceError, StoreError
from runner.model_source import PACKAGE_PREFIX, is_store_source, package_target, resolve_source
from runner.settings import ModelConfig, Settings, load_settings
from runner.store import ModelStore, age
from runner.units import format_count, format_size

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import TaskID

    from runner.pull import PullEvent


def _quiet_logging(settings: Settings) -> None:
    # The progress bar is the report; INFO lines from the downloader would tear it.
    level = logging.DEBUG if settings.log_level.lower() == "debug" else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)


class _Bars:
    """Renders pull events: a bar per blob (bytes, rate, ETA), a line per other status."""

    def __init__(self, console: Console) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
            TransferSpeedColumn(), TimeRemainingColumn(), console=console,
        )
        self._bars: dict[str, TaskID] = {}

    def __call__(self, event: PullEvent) -> None:
        if event.digest is None or event.total is None:
            self.progress.console.print(event.status)
            return
        bar = self._bars.get(event.digest)
        if bar is None:
            bar = self.progress.add_task(event.status, total=event.total)
            self._bars[event.digest] = bar
        self.progress.update(bar, description=event.status, total=event.total,
                             completed=event.completed)


async def _pull(settings: Settings, args: argparse.Namespace, target: str) -> str:
    from rich.console import Console

    from runner.pull import Puller, is_url

    puller = Puller(settings, open_store(settings))
    bars = _Bars(Console(stderr=True))
    try:
        with bars.progress:
            if is_url(target):
                stored = await puller.pull_url(target, args.sha256, bars, args.name)
            else:
                stored = await puller.pull(target, bars, insecure=args.insecure)
    finally:
        await puller.aclose()
    return stored.display


def cmd_pull(args: argparse.Namespace) -> int:
    # Imported here: `switchboard --help` and the other commands should not pay for them.
    from runner.errors import PullError
    from runner.pull import is_url

    settings = load_settings(args.config)
    _quiet_logging(settings)
    target: str = args.model
    if is_url(target) and not args.sha256:
        print("pull: a URL needs --sha256 HEX (the file's digest, to verify it)", file=sys.stderr)
        return 2
    configured = Catalog(settings, open_store(settings)).configured(target)
    if configured is not None and not is_store_source(configured[1].source):
        # A packaged or file model: make sure its GGUF is there (assembling a package).
        try:
            print(resolve_source(configured[1].source, settings.home))
        except ModelSourceError as exc:
            print(f"pull: {exc}", file=sys.stderr)
            return 1
        return 0
    if configured is not None:
        target = configured[1].source
    try:
        name = asyncio.run(_pull(settings, args, target))
    except PullError as exc:
        print(f"pull: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("pull: interrupted; the same command resumes where it stopped", file=sys.stderr)
        return 130
    print(f"pulled {name}")
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    store = open_store(settings)
    rows = [(m.display, m.digest[7:19], format_size(m.size), age(m.modified), "store")
            for m in store.models()]
    for name, config in settings.models.items():
        if is_store_source(config.source):
            continue
        try:
            if config.source.startswith(PACKAGE_PREFIX):  # assembling one is not for `ls`
                path = package_target(config.source.removeprefix(PACKAGE_PREFIX), settings.home)
                size = format_size(path.stat().st_size) if path.is_file() else "not assembled"
            else:
                size = format_size(resolve_source(config.source, settings.home).stat().st_size)
        except (ModelSourceError, OSError):
            size = "missing"
        rows.append((name, "-", size, "-", "config: " + config.source))
    print(f"{'NAME':40} {'ID':12}  {'SIZE':>9}  {'MODIFIED':16}  SOURCE")
    for name, digest, size, modified, source in rows:
        print(f"{name:40} {digest:12}  {size:>9}  {modified:16}  {source}")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    configured = Catalog(settings, open_store(settings)).configured(args.model)
    if configured is not None and not is_store_source(configured[1].source):
        print(f"rm: '{args.model}' comes from the config ({configured[1].source}), not the "
              "store; remove it from the config instead", file=sys.stderr)
        return 1
    target = configured[1].source if configured is not None else args.model
    try:
        removed = open_store(settings).remove(target)
    except (StoreError, InvalidNameError) as exc:
        print(f"rm: {exc}", file=sys.stderr)
        return 1
    print(f"deleted '{args.model}' ({len(removed)} blob(s) freed)")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    store = open_store(settings)
    resolved = Catalog(settings, store).resolve(args.model)
    if resolved is None:
        print(f"show: model '{args.model}' not found (switchboard ls lists them)",
              file=sys.stderr)
        return 1
    name, config = resolved
    from runner.model_info import ModelDescriber

    try:
        resolve_source(config.source, settings.home, store=store)  # assembles a packaged one
    except ModelSourceError as exc:
        print(f"show: {exc}", file=sys.stderr)
        return 1
    facts = ModelDescriber(settings.home, store).describe(name, config)
    if facts.problem is not None or facts.path is None:
        print(f"show: {facts.problem or 'no model file'}", file=sys.stderr)
        return 1
    template = {
        "gguf": "in the GGUF",
        "configured": f"configured: {config.chat_template}",
        "none": "none in the GGUF (llama-server falls back to ChatML)",
        "layer": "none in the GGUF; the format of its Ollama template layer",
    }[facts.template_source]
    rows = [
        ("name", name),
        ("source", _source(store, config.source)),
        ("file", str(facts.path)),
        ("architecture", facts.architecture or "unknown"),
        ("parameters", format_count(facts.parameters)),
        ("quantization", facts.quantization),
        ("context length", _context(settings, config, facts.path, facts.context_length)),
        ("embedding length", str(facts.embedding_length)),
        ("chat template", template),
        ("capabilities", ", ".join(facts.capabilities)),
        ("size", format_size(facts.size)),
    ]
    if config.options:
        rows.append(("parameters", " ".join(f"{k}={v}" for k, v in config.options.items())))
    if config.system:
        rows.append(("system", _first_line(config.system)))
    if config.messages:
        rows.append(("messages", f"{len(config.messages)} before each conversation"))
    for what in ("projector", "draft"):
        if getattr(config, what):
            rows.append((what, getattr(config, what)))
    rows += [("adapter", f"{a.source} (scale {a.scale:g})") for a in config.adapters]
    if "license" in facts.layers:
        rows.append(("license", _first_line(facts.layers["license"])))
    for key, value in rows:
        print(f"  {key:18} {value}")
    return 0


def _source(store: ModelStore, source: str) -> str:
    """Where the model came from: a URL pull's URL, not the store name it was given."""
    stored = store.find(source) if is_store_source(source) else None
    origin = stored.manifest.origin if stored is not None else None
    return f"{origin} (stored as {stored.display})" if origin and stored else source


def _context(settings: Settings, config: ModelConfig, path: Path, trained: int | None) -> str:
    """What a runner of the model is started with, and what one request gets of it; the
    GGUF's trained context is only where the configured one comes from when none is set."""
    from runner.context_window import context_window, runner_context, runner_slots

    ctx = runner_context(config.ctx_size, config.args, trained or 0)
    if not ctx:
        return "unknown"
    slots = runner_slots(config.parallel or settings.num_parallel, config.args)
    window = context_window(path, config.ctx_size, config.parallel or settings.num_parallel,
                            config.args)
    share = f", {window.tokens} per request ({slots} slots)" if slots > 1 and window.tokens \
        else ""
    trained_on = f" (the model was trained on {trained})" if trained and trained != ctx else ""
    return f"{ctx} tokens per runner{share}{trained_on}"


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0][:100] if lines else ""


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                 common: argparse.ArgumentParser, default_model: str) -> None:
    pull = sub.add_parser("pull", parents=[common],
                          help="pull a model from a registry or a URL (or assemble a packaged one)")
    pull.add_argument("model", nargs="?", default=default_model, metavar="MODEL",
                      help="[HOST[:PORT]/][NAMESPACE/]NAME[:TAG], or an https://…/file.gguf URL")
    pull.add_argument("--insecure", action="store_true", help="plain HTTP to the registry")
    pull.add_argument("--sha256", help="with a URL: the file's sha256 (required)")
    pull.add_argument("--name", help="with a URL: the name to store it under")
    pull.set_defaults(func=cmd_pull)

    ls = sub.add_parser("ls", parents=[common], aliases=["list"],
                        help="list stored and configured models")
    ls.set_defaults(func=cmd_ls)

    rm = sub.add_parser("rm", parents=[common], help="remove a stored model (and unused blobs)")
    rm.add_argument("model", metavar="MODEL")
    rm.set_defaults(func=cmd_rm)

    show = sub.add_parser("show", parents=[common],
                          help="a model's GGUF metadata, parameters, system prompt and layers")
    show.add_argument("model", metavar="MODEL")
    show.set_defaults(func=cmd_show)

