"""Ollama's Modelfile read into a create request; every mistake names its line."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.modelfile import ModelfileError, parse_modelfile

GOOD = '''# a pirate
FROM gemma3:270m
PARAMETER temperature 0.2
PARAMETER num_predict 64
PARAMETER stop "<end>"
PARAMETER stop <eot>
system """You are a pirate.
Answer as one."""
MESSAGE user Ahoy?
MESSAGE assistant """Ahoy!"""
ADAPTER ./lora.gguf
LICENSE "MIT"
'''


def test_a_modelfile_becomes_a_create_request(tmp_path: Path) -> None:
    request = parse_modelfile(GOOD, "pirate", tmp_path / "Modelfile")
    assert request.model == "pirate" and request.base == "gemma3:270m"
    assert request.parameters == {"temperature": 0.2, "num_predict": 64,
                                  "stop": ["<end>", "<eot>"]}
    assert request.system == "You are a pirate.\nAnswer as one."
    assert request.messages == ({"role": "user", "content": "Ahoy?"},
                                {"role": "assistant", "content": "Ahoy!"})
    assert request.adapter_sources == (str(tmp_path / "lora.gguf"),)
    assert request.license == ("MIT",)


def test_a_from_file_is_read_relative_to_the_modelfile(tmp_path: Path) -> None:
    request = parse_modelfile("FROM ./weights/model.gguf\n", "m", tmp_path / "Modelfile")
    assert request.base == str(tmp_path / "weights" / "model.gguf")


@pytest.mark.parametrize(("text", "says"), [
    ("FROM m\nFORM m\n", ":2: unknown command 'FORM'"),
    ("PARAMETER temperature 1\n", "no FROM line"),
    ("FROM m\nPARAMETER num_predict\n", ":2: PARAMETER num_predict needs a value"),
    ("FROM m\nMESSAGE narrator hello\n", ":2: MESSAGE role 'narrator' is not one of"),
    ('FROM m\nSYSTEM """never closed\nstill\n', ':2: SYSTEM\'s """ is never closed'),
    ("FROM a\nFROM b\n", ":2: a second FROM"),
    ("FROM m\nSYSTEM\n", ":2: SYSTEM needs a value"),
])
def test_mistakes_name_the_file_and_line(tmp_path: Path, text: str, says: str) -> None:
    with pytest.raises(ModelfileError) as caught:
        parse_modelfile(text, "m", tmp_path / "Modelfile")
    assert says in str(caught.value) and str(tmp_path / "Modelfile") in str(caught.value)
