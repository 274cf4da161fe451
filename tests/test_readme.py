"""The README's generated references match the code, and it starts with the two commands."""

from __future__ import annotations

import re
from pathlib import Path

from gateway.cli import build_parser
from gateway.generated_docs import commands_markdown, settings_markdown

README = (Path(__file__).parent.parent / "README.md").read_text()


def _between(name: str) -> str:
    match = re.search(rf"<!-- {name}:begin[^>]*-->\n(.*?)\n<!-- {name}:end -->", README, re.S)
    assert match is not None, f"README lost its {name} markers"
    return match.group(1)


def test_the_settings_reference_is_generated_from_the_settings_module() -> None:
    assert _between("settings") == settings_markdown(), (
        "README settings table is stale: paste `switchboard config --markdown` between markers"
    )


def test_the_command_reference_is_generated_from_the_parser() -> None:
    assert _between("commands") == commands_markdown(build_parser()), (
        "README command table is stale: paste `switchboard commands` between the markers"
    )


def test_the_readme_starts_with_exactly_the_two_commands() -> None:
    first_block = README.split("```")[1]
    commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert commands == ["make serve", "make test"]
