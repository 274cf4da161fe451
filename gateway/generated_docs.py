"""Reference text generated from the code, so the README and the config file cannot drift:
``switchboard config --markdown`` (settings table), ``--yaml`` (commented settings) and
``switchboard help --markdown`` (commands). Tests compare them with what is checked in."""

from __future__ import annotations

import argparse
import re

from runner.settings import ModelConfig, describe


def settings_markdown() -> str:
    rows = ["| setting | environment | default | meaning |", "|---|---|---|---|"]
    for name, env, default, doc in describe():
        shown = f"`{default}`" if default else "(empty)"
        rows.append(f"| `{name}` | `{env}` | {shown} | {doc} |")
    return "\n".join(rows)


def settings_yaml() -> str:
    """Every setting, commented out at its default, with its meaning above it."""
    lines = []
    for name, _env, default, doc in describe():
        lines.append(f"# {doc}")
        lines.append(f"# {name}: {default}".rstrip())
    return "\n".join(lines)


def model_keys_yaml() -> str:
    """The keys a model entry takes, for the config file's models section."""
    lines = []
    for name, field in ModelConfig.model_fields.items():
        lines.append(f"#   {name}: {field.description}")
    return "\n".join(lines)


def _usage(parser: argparse.ArgumentParser) -> str:
    text = " ".join(parser.format_usage().removeprefix("usage: ").split())
    return re.sub(r" \[-h\]| \[--config CONFIG\]", "", text)


def commands_markdown(parser: argparse.ArgumentParser) -> str:
    rows = ["| command | what it does |", "|---|---|"]

    def walk(current: argparse.ArgumentParser) -> None:
        for action in current._actions:
            if not isinstance(action, argparse._SubParsersAction):
                continue
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, child in action.choices.items():
                nested = any(isinstance(a, argparse._SubParsersAction) for a in child._actions)
                if nested:
                    walk(child)
                else:
                    usage = _usage(child).replace("|", "\\|")  # a table cell
                    rows.append(f"| `{usage}` | {helps.get(name) or ''} |")

    walk(parser)
    return "\n".join(rows)
