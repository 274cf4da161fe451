from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter

from runner.gguf_header import GGUFError, cached_header, read_header


def _write(path: Path) -> Path:
    writer = GGUFWriter(str(path), "gemma3")
    writer.add_block_count(4)
    writer.add_embedding_length(64)
    writer.add_head_count(2)
    writer.add_string("general.name", "tiny")
    writer.add_token_list([f"tok{i}" for i in range(999)] + ["▁longest"])
    writer.add_array("some.nested", [[1, 2], [3]])
    writer.add_float32("some.float", 0.5)
    writer.add_tensor("f32", np.zeros((8, 32), dtype=np.float32))
    writer.add_tensor("f16", np.zeros((4, 64), dtype=np.float16))
    q8 = np.zeros((2, 34 * 4), dtype=np.uint8)  # 2 rows x 4 Q8_0 blocks of 34 bytes
    writer.add_tensor("q8", q8, raw_dtype=GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_read_header_matches_the_gguf_package(tmp_path: Path) -> None:
    path = _write(tmp_path / "tiny.gguf")
    info = read_header(path)
    reference = GGUFReader(path)
    assert info.tensor_count == len(reference.tensors) == 3
    assert info.tensor_bytes == sum(int(t.n_bytes) for t in reference.tensors)
    assert info.architecture == "gemma3"
    assert info.arch_int("block_count") == 4 and info.arch_int("embedding_length") == 64
    assert info.metadata["general.name"] == "tiny"
    assert info.metadata["tokenizer.ggml.tokens"] == 1000
    assert info.metadata["some.nested"] == 2
    assert info.metadata["some.float"] == pytest.approx(0.5)
    assert info.arch_int("missing", 7) == 7
    # In UTF-8 bytes ("▁" is 3), which is what the gateway's context check divides by.
    assert info.longest_token == len("▁longest".encode()) == 10


@pytest.mark.parametrize("content", [b"", b"NOPE" + b"\0" * 64, b"GGUF\3\0\0\0"])
def test_read_header_rejects_what_is_not_gguf(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(GGUFError):
        read_header(path)


def test_read_header_rejects_a_truncated_header(tmp_path: Path) -> None:
    full = _write(tmp_path / "tiny.gguf").read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(full[:200])
    with pytest.raises(GGUFError, match="malformed"):
        read_header(cut)


def test_read_header_of_the_default_model_is_fast(gemma_path: Path) -> None:
    info = read_header(gemma_path)
    assert info.architecture == "gemma3"
    assert info.arch_int("block_count") == 18
    assert info.metadata["tokenizer.ggml.tokens"] == 262144
    assert 200 * 2**20 < info.tensor_bytes < 300 * 2**20


def test_check_gguf_names_the_file_and_what_is_wrong(tmp_path: Path, gemma_path: Path) -> None:
    from runner.errors import ModelSourceError
    from runner.model_source import check_gguf
    from tests.fakes.gguf import write_empty_gguf

    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"PK\x03\x04 a zip, not a model" * 10)
    with pytest.raises(ModelSourceError, match=rf"{junk} is not a GGUF file"):
        check_gguf(junk)
    truncated = tmp_path / "half.gguf"
    with gemma_path.open("rb") as whole:
        truncated.write_bytes(whole.read(gemma_path.stat().st_size // 2))
    with pytest.raises(ModelSourceError, match=rf"{truncated} is truncated: \d+ bytes, its "
                                               r"header describes 253113024"):
        check_gguf(truncated)
    check_gguf(gemma_path)  # whole: no complaint
    check_gguf(write_empty_gguf(tmp_path / "empty.gguf"))


def test_read_header_parses_each_version_of_a_file_once(tmp_path: Path) -> None:
    path = _write(tmp_path / "tiny.gguf")
    first = read_header(path)
    assert read_header(path) is first  # the same file: not parsed again on the next load
    writer = GGUFWriter(str(tmp_path / "other.gguf"), "llama")
    writer.add_string("general.name", "replaced")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    (tmp_path / "other.gguf").replace(path)  # as a pull or a copy would replace it
    again = read_header(path)
    assert again is not first and again.metadata["general.name"] == "replaced"


def test_cached_header_answers_only_for_a_version_already_parsed(tmp_path: Path) -> None:
    path = _write(tmp_path / "tiny.gguf")
    assert cached_header(path) is None  # never parsed: the caller must parse, off the loop
    info = read_header(path)
    assert cached_header(path) is info
    path.write_bytes(path.read_bytes() + b"\0")  # a new version of the file
    assert cached_header(path) is None
    assert cached_header(tmp_path / "missing.gguf") is None
