"""``switchboard backends ls | install | rm``: runner builds from galleries, beside the
embedded payloads. Works on ``$SWITCHBOARD_HOME/backends`` directly; a running server launches
a newly installed backend on the next load of a model configured with ``backend: NAME``."""

from __future__ import annotations

import argparse
import asyncio
import sys

import httpx

from runner.backends import BackendError, Backends
from runner.capabilities import detect, pick
from runner.download import DownloadOptions, client_for
from runner.gallery import GalleryEntry, read_galleries
from runner.settings import Settings, load_settings


def _backends(settings: Settings) -> Backends:
    return Backends(settings.home / "backends", settings.system_backends,
                    options=DownloadOptions.from_settings(settings))


async def _gallery(settings: Settings) -> tuple[list[GalleryEntry], list[str]]:
    async with client_for(DownloadOptions.from_settings(settings)) as client:
        return await read_galleries(settings.galleries, client)


def cmd_ls(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    backends = _backends(settings)
    print(f"{'NAME':24} {'ALIAS':20} {'META FOR':20} {'KIND':9} PATH")
    for b in backends.all():
        print(f"{b.name:24} {b.alias or '-':20} {b.meta_for or '-':20} {b.kind:9} "
              f"{b.run or b.path}")
    if not args.available:
        return 0
    try:
        entries, problems = asyncio.run(_gallery(settings))
    except httpx.HTTPError as exc:
        entries, problems = [], [str(exc)]
    capability = detect(settings.force_capability)
    print(f"\navailable in the galleries (this machine: {capability}):")
    print(f"{'NAME':24} {'ALIAS':20} {'INSTALLED':9} DESCRIPTION")
    for entry in entries:
        installed = "yes" if backends.get(entry.name) is not None else "no"
        about = entry.description
        if entry.is_meta:
            about = f"meta -> {pick(entry.capabilities, capability) or 'nothing here'}; {about}"
        print(f"{entry.name:24} {entry.alias or '-':20} {installed:9} {about}")
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    return 0


def cmd_install(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    backends = _backends(settings)
    capability = detect(settings.force_capability)

    async def install() -> str:
        entries, problems = await _gallery(settings)
        for problem in problems:
            print(f"warning: {problem}", file=sys.stderr)
        installed = await backends.install(entries, args.name, capability, force=args.force,
                                           report=lambda line: print(line, file=sys.stderr))
        return f"{installed.name}: {installed.run or installed.path}"

    try:
        print(asyncio.run(install()))
    except BackendError as exc:
        print(f"backends install: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    try:
        removed = _backends(settings).remove(args.name)
    except BackendError as exc:
        print(f"backends rm: {exc}", file=sys.stderr)
        return 1
    print("removed " + ", ".join(removed))
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                 common: argparse.ArgumentParser) -> None:
    group = sub.add_parser("backends", parents=[common], help="runner backends from galleries")
    actions = group.add_subparsers(dest="action", required=True)
    ls = actions.add_parser("ls", parents=[common], help="installed, system and embedded")
    ls.add_argument("--available", action="store_true", help="also list the galleries' entries")
    ls.set_defaults(func=cmd_ls)
    install = actions.add_parser("install", parents=[common], help="install from a gallery")
    install.add_argument("name", metavar="NAME")
    install.add_argument("--force", action="store_true", help="reinstall if present")
    install.set_defaults(func=cmd_install)
    rm = actions.add_parser("rm", parents=[common], help="remove an installed backend")
    rm.add_argument("name", metavar="NAME")
    rm.set_defaults(func=cmd_rm)
