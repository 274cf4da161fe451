"""Ollama's Modelfile, read into a :class:`~runner.model_create.CreateRequest`.

Commands (case does not matter): ``FROM``, ``PARAMETER name value``, ``SYSTEM``, ``TEMPLATE``,
``ADAPTER``, ``MESSAGE role text``, ``LICENSE``; ``#`` starts a comment line. A value may span
lines inside triple quotes (``\"\"\"…\"\"\"``), or be one quoted string. Every error names its
line. ``FROM`` and ``ADAPTER`` paths are read relative to the Modelfile's directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runner.model_create import CreateRequest
from runner.model_defaults import ROLES

COMMANDS = ("FROM", "PARAMETER", "SYSTEM", "TEMPLATE", "ADAPTER", "MESSAGE", "LICENSE")


class ModelfileError(ValueError):
    """A Modelfile that cannot be read; the message names the file and line."""


def parse_modelfile(text: str, model: str, where: Path) -> CreateRequest:
    """The create request a Modelfile at ``where`` (for its messages and relative paths)
    describes for the model named ``model``."""
    base: str | None = None
    system = template = None
    parameters: dict[str, Any] = {}
    messages: list[dict[str, str]] = []
    adapters: list[str] = []
    licenses: list[str] = []
    for number, command, value in _commands(text, where):
        def fail(message: str, number: int = number) -> ModelfileError:
            return ModelfileError(f"{where}:{number}: {message}")

        if command == "FROM":
            if base is not None:
                raise fail("a second FROM: a model is made from one base")
            base = _path_or_name(value, where.parent)
        elif command == "PARAMETER":
            name, _, raw = value.partition(" ")
            if not raw.strip():
                raise fail(f"PARAMETER {name or '?'} needs a value: PARAMETER name value")
            parsed = _parameter_value(_unquote(raw.strip()))
            if name == "stop":
                parameters.setdefault("stop", []).append(str(parsed))
            else:
                parameters[name] = parsed
        elif command == "MESSAGE":
            role, _, content = value.partition(" ")
            if role not in ROLES:
                raise fail(f"MESSAGE role {role!r} is not one of {', '.join(sorted(ROLES))}")
            messages.append({"role": role, "content": _unquote(content.strip())})
        elif command == "ADAPTER":
            adapters.append(_path_or_name(value, where.parent))
        elif command == "SYSTEM":
            system = _unquote(value)
        elif command == "TEMPLATE":
            template = _unquote(value)
        else:
            licenses.append(_unquote(value))
    if base is None:
        raise ModelfileError(f"{where}: no FROM line: say which model or GGUF to build on")
    return CreateRequest(model=model, base=base, system=system, template=template,
                         parameters=parameters, messages=tuple(messages),
                         adapter_sources=tuple(adapters), license=tuple(licenses))


def _commands(text: str, where: Path) -> list[tuple[int, str, str]]:
    """(line number, command, value) for each command, multi-line values joined."""
    found: list[tuple[int, str, str]] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        number, line = index + 1, lines[index].strip()
        index += 1
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        command = word.upper()
        if command not in COMMANDS:
            raise ModelfileError(f"{where}:{number}: unknown command {word!r}; a Modelfile "
                                 f"takes {', '.join(COMMANDS)}")
        rest = rest.strip()
        if '"""' in rest and rest.count('"""') == 1:  # a value running over lines
            parts = [rest]
            while index < len(lines) and '"""' not in lines[index]:
                parts.append(lines[index])
                index += 1
            if index == len(lines):
                raise ModelfileError(f'{where}:{number}: {command}\'s """ is never closed')
            parts.append(lines[index])
            index += 1
            rest = "\n".join(parts)
        if not rest:
            raise ModelfileError(f"{where}:{number}: {command} needs a value")
        found.append((number, command, rest))
    return found


def _unquote(value: str) -> str:
    value = value.strip()
    if value.startswith('"""') and value.endswith('"""') and len(value) >= 6:
        return value[3:-3].strip("\n")
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    if '"""' in value:  # MESSAGE user """…""" after its role
        head, _, body = value.partition('"""')
        return (head + body.rsplit('"""', 1)[0]).strip("\n")
    return value


def _parameter_value(raw: str) -> Any:
    """A PARAMETER value as JSON would carry it: a number where it reads as one."""
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    return raw


def _path_or_name(value: str, base: Path) -> str:
    """A FROM or ADAPTER value: a file (relative to the Modelfile) as an absolute path, else
    the model name as it is."""
    value = _unquote(value)
    path = Path(value).expanduser()
    if value.startswith((".", "/", "~")) or value.endswith(".gguf"):
        return str(path if path.is_absolute() else (base / path).resolve())
    return value
