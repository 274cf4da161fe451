"""``switchboard create NAME -f Modelfile`` and ``switchboard cp SRC DST``: making models in
the store from the command line, as ``ollama create`` and ``ollama cp`` do.

Like ``pull`` and ``rm`` these work on the store directly (no server needed); a running server
serves a created model at once. Mistakes are one line on stderr, naming the Modelfile's line
where there is one, and exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from runner.catalog import Catalog, open_store
from runner.model_create import CreateError, ModelCreator
from runner.modelfile import ModelfileError, parse_modelfile
from runner.settings import load_settings


def cmd_create(args: argparse.Namespace) -> int:
    path = Path(args.file).expanduser()
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        print(f"create: cannot read {path}: {getattr(exc, 'strerror', None) or exc}",
              file=sys.stderr)
        return 1
    try:
        request = parse_modelfile(text, args.model, path.resolve())
    except ModelfileError as exc:
        print(f"create: {exc}", file=sys.stderr)
        return 1
    settings = load_settings(args.config)
    creator = ModelCreator(Catalog(settings, open_store(settings)))

    def say(event: dict[str, Any]) -> None:
        print(event.get("status", ""))

    try:
        asyncio.run(creator.create(request, say))
    except CreateError as exc:
        print(f"create: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_cp(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    try:
        ModelCreator(Catalog(settings, open_store(settings))).copy(args.source, args.destination)
    except CreateError as exc:
        print(f"cp: {exc}", file=sys.stderr)
        return 1
    print(f"copied '{args.source}' to '{args.destination}'")
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                 common: argparse.ArgumentParser) -> None:
    create = sub.add_parser("create", parents=[common],
                            help="make a model from a Modelfile (FROM, PARAMETER, SYSTEM …)")
    create.add_argument("model", metavar="NAME")
    create.add_argument("-f", "--file", default="Modelfile", help="the Modelfile (./Modelfile)")
    create.set_defaults(func=cmd_create)
    cp = sub.add_parser("cp", parents=[common], help="copy a stored model to another name")
    cp.add_argument("source", metavar="SRC")
    cp.add_argument("destination", metavar="DST")
    cp.set_defaults(func=cmd_cp)
