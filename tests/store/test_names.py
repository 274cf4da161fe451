from __future__ import annotations

from pathlib import PurePosixPath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runner.errors import InvalidNameError
from runner.names import ModelName, blob_filename, check_digest

HOST = "registry.ollama.ai"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("gemma3", (HOST, "library", "gemma3", "latest")),
        ("gemma3:270m", (HOST, "library", "gemma3", "270m")),
        ("someone/model:q4", (HOST, "someone", "model", "q4")),
        ("127.0.0.1:5000/tiny", ("127.0.0.1:5000", "library", "tiny", "latest")),
        ("localhost/tiny:1", ("localhost", "library", "tiny", "1")),
        ("Example.COM/ns/m:t", ("example.com", "ns", "m", "t")),
    ],
)
def test_names_fill_in_registry_namespace_and_tag(
    text: str, expected: tuple[str, str, str, str]
) -> None:
    name = ModelName.parse(text, HOST)
    assert (name.host, name.namespace, name.model, name.tag) == expected


@pytest.mark.parametrize(
    "text",
    ["", "/abs/model", "../model", "ns/../x", "a/b/c/d", "model:..", "a//b", "ns/.hidden",
     "model:tag/x", "m\\x", "host/ns/..:latest", "ns/model:tag:more", "model:"],
)
def test_names_that_could_escape_the_store_are_rejected(text: str) -> None:
    with pytest.raises(InvalidNameError):
        ModelName.parse(text, HOST)


def test_display_is_the_shortest_form_that_parses_back() -> None:
    for text, shown in [("gemma3", "gemma3:latest"), ("x/y:z", "x/y:z"),
                        ("127.0.0.1:9/tiny", "127.0.0.1:9/library/tiny:latest")]:
        name = ModelName.parse(text, HOST)
        assert name.display(HOST) == shown
        assert ModelName.parse(shown, HOST) == name


@given(st.text(alphabet="abc./:-_\\ 0", max_size=24))
def test_any_accepted_name_stays_inside_the_manifest_tree(text: str) -> None:
    try:
        name = ModelName.parse(text, HOST)
    except InvalidNameError:
        return
    parts = name.path.parts
    assert len(parts) == 4
    assert all(part not in ("", ".", "..") and "/" not in part for part in parts)
    assert not PurePosixPath(*parts).is_absolute()


def test_digests_must_be_canonical_sha256() -> None:
    good = "sha256:" + "a" * 64
    assert check_digest(good) == good
    assert blob_filename(good) == "sha256-" + "a" * 64
    for bad in ["sha256:" + "A" * 64, "sha256:../../etc", "md5:" + "a" * 32, "a" * 64,
                "sha256:" + "a" * 63]:
        with pytest.raises(InvalidNameError):
            check_digest(bad)
