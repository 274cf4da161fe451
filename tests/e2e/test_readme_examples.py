"""The README's Python examples, run as a reader would paste them, against a served gateway."""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.server import Served, gemma_models, start_server

README = (Path(__file__).parents[2] / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)
pytestmark = pytest.mark.usefixtures("real_variants")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, gemma_path: Path) -> Iterator[Served]:
    server = start_server(tmp_path_factory.mktemp("readme"), gemma_models(gemma_path))
    yield server
    server.stop()


def test_the_readme_has_python_examples() -> None:
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_a_readme_python_example_runs_as_written(served: Served, block: str) -> None:
    # Only the address differs from what the reader runs: the test server has its own port.
    code = block.replace("http://127.0.0.1:8080", served.url)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    assert printed.getvalue().strip(), "the example printed nothing"
