"""The saved prompt caches on disk: their tokens, matching by prefix, the budget, the keys."""

from __future__ import annotations

import os
import struct
from array import array
from pathlib import Path

from runner.prompt_cache import (
    MIN_TOKENS,
    SEQ_MAGIC,
    SEQ_VERSION,
    PromptCache,
    common_prefix,
    read_tokens,
    runner_key,
)

KEY = "k" * 32


def write_slot(path: Path, tokens: list[int], state_bytes: int = 1000, packed: bool = True,
               media: int = 0) -> Path:
    """A slot file as llama-server writes it: header, the server's packed tokens, the state."""
    words = [-1, 1, len(tokens), *tokens, media] if packed else tokens
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<III", SEQ_MAGIC, SEQ_VERSION, len(words))
                     + array("i", words).tobytes() + b"\0" * state_bytes)
    return path


def conversation(turns: int) -> list[int]:
    return [2] + [100 + i % 50 for i in range(turns * 100)]


def test_read_tokens_from_the_servers_packed_list_and_a_plain_one(tmp_path: Path) -> None:
    assert list(read_tokens(write_slot(tmp_path / "a.slot", [5, 6, 7])) or []) == [5, 6, 7]
    plain = write_slot(tmp_path / "b.slot", [5, 6, 7], packed=False)
    assert list(read_tokens(plain) or []) == [5, 6, 7]


def test_files_with_images_or_of_another_format_are_not_restorable(tmp_path: Path) -> None:
    assert read_tokens(write_slot(tmp_path / "m.slot", [5, 6], media=1)) is None
    other = tmp_path / "o.slot"
    other.write_bytes(struct.pack("<III", SEQ_MAGIC, SEQ_VERSION + 1, 0))
    assert read_tokens(other) is None
    cut = tmp_path / "c.slot"
    cut.write_bytes(struct.pack("<III", SEQ_MAGIC, SEQ_VERSION, 100) + b"\0" * 8)
    assert read_tokens(cut) is None


def test_common_prefix_counts_shared_leading_tokens() -> None:
    a = array("i", range(1000))
    assert common_prefix(a, list(range(1000))) == 1000
    assert common_prefix(a, [*range(637), -5, 638]) == 637
    assert common_prefix(a, list(range(10))) == 10
    assert common_prefix(a, [9]) == 0


def test_best_is_the_longest_shared_prefix_and_at_least_min_tokens(tmp_path: Path) -> None:
    cache = PromptCache(tmp_path, 1 << 30)
    one, two = conversation(1), conversation(3)
    other = [2] + [7] * 300
    for tokens in (one, other):
        write_slot(tmp_path / KEY / cache.new_name(), tokens)
    write_slot(tmp_path / KEY / "two.slot", two[:250] + [9] * 50)
    cache = PromptCache(tmp_path, 1 << 30)  # read from disk as a new process would
    found = cache.best(KEY, [*two, 1, 2, 3])
    assert found is not None and found[1] == 250
    assert cache.best(KEY, [2] + [8] * 300) is None  # 1 token shared: below MIN_TOKENS
    assert cache.best("another-key", two) is None


def test_a_conversation_saved_again_replaces_the_shorter_save(tmp_path: Path) -> None:
    cache = PromptCache(tmp_path, 1 << 30)
    first = write_slot(tmp_path / KEY / cache.new_name(), conversation(1))
    assert cache.add(KEY, first.name) is not None
    longer = write_slot(tmp_path / KEY / cache.new_name(), conversation(2))
    assert cache.add(KEY, longer.name) is not None
    assert not first.exists()
    again = write_slot(tmp_path / KEY / cache.new_name(), conversation(1))
    assert cache.add(KEY, again.name) is None  # a kept cache extends it: it adds nothing
    assert not again.exists()
    assert [len(s.tokens) for s in cache.entries(KEY)] == [201]


def test_too_few_tokens_are_not_kept(tmp_path: Path) -> None:
    cache = PromptCache(tmp_path, 1 << 30)
    short = write_slot(tmp_path / KEY / cache.new_name(), list(range(MIN_TOKENS - 1)))
    assert cache.add(KEY, short.name) is None
    assert not short.exists()


def test_the_budget_drops_the_least_recently_used_across_keys(tmp_path: Path) -> None:
    size = write_slot(tmp_path / "probe.slot", conversation(1), 10_000).stat().st_size
    (tmp_path / "probe.slot").unlink()
    cache = PromptCache(tmp_path, 2 * size)
    oldest = write_slot(tmp_path / ("a" * 32) / "x.slot", conversation(1), 10_000)
    os.utime(oldest, (1, 1))
    middle = write_slot(tmp_path / KEY / "y.slot", [3] * 101, 10_000)
    os.utime(middle, (2, 2))
    assert cache.entries(KEY)  # scanned: two files fit
    cache.used(cache.entries(KEY)[0])  # restored: the newest now
    newest = write_slot(tmp_path / KEY / "z.slot", [4] * 101, 10_000)
    assert cache.add(KEY, newest.name) is not None
    assert not oldest.exists() and middle.exists() and newest.exists()
    assert cache.total() <= 2 * size
    assert not (tmp_path / ("a" * 32)).exists()  # its key's directory went with its last file


def test_no_budget_keeps_nothing(tmp_path: Path) -> None:
    cache = PromptCache(tmp_path, 0)
    assert not cache.enabled
    saved = write_slot(tmp_path / KEY / "x.slot", conversation(1))
    assert cache.add(KEY, saved.name) is None
    assert not saved.exists()


def test_the_key_changes_with_the_build_the_model_and_the_shape(tmp_path: Path) -> None:
    binary = tmp_path / "llama-server"
    binary.write_bytes(b"build one")
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF one")
    key = runner_key(binary, (4096, 1), [model])
    assert runner_key(binary, (4096, 1), [model]) == key
    assert runner_key(binary, (2048, 1), [model]) != key
    other_model = tmp_path / "other.gguf"
    other_model.write_bytes(b"GGUF two")
    assert runner_key(binary, (4096, 1), [other_model]) != key
    binary.write_bytes(b"build two")
    assert runner_key(binary, (4096, 1), [model]) != key
