"""Prompt caches across a swap, on the real runner: a conversation resumed after its model
was unloaded starts from the cache its runner saved, and answers what a fresh evaluation
answers; a runner of another shape never gets that cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.server import Served, cmdline, start_server, wait_until

pytestmark = pytest.mark.usefixtures("real_variants")

# About 550 tokens: long enough to be worth saving, short enough to evaluate in about 2 s.
DOCUMENT = " ".join(f"Fact {i}: the number {i} is {'even' if i % 2 == 0 else 'odd'}."
                    for i in range(45))
OPENING = [{"role": "system", "content": "You answer briefly. " + DOCUMENT},
           {"role": "user", "content": "Is 7 odd?"}]
RESUMED = [*OPENING, {"role": "assistant", "content": "Yes."},
           {"role": "user", "content": "Is 8 odd?"}]


def _ask(served: Served, model: str, messages: list[dict[str, str]]) -> dict[str, Any]:
    response = httpx.post(f"{served.url}/v1/chat/completions", timeout=120, json={
        "model": model, "messages": messages, "max_tokens": 12, "temperature": 0})
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def _cached(answer: dict[str, Any]) -> int:
    return int(answer["usage"]["prompt_tokens_details"]["cached_tokens"])


def _unload(served: Served, model: str) -> None:
    saves = served.log_text().count("runner stop:")
    response = httpx.post(f"{served.url}/api/generate", timeout=30,
                          json={"model": model, "keep_alive": 0})
    assert response.status_code == 200, response.text
    assert wait_until(lambda: served.log_text().count("runner stop:") > saves, 30), \
        served.log_text()


def test_a_resumed_conversation_restores_its_cache_and_answers_as_a_fresh_one(
        tmp_path: Path, gemma_path: Path) -> None:
    models = {"gemma3:270m": {"source": str(gemma_path), "ctx_size": 2048,
                              "chat_template": "gemma"},
              "other-shape": {"source": str(gemma_path), "ctx_size": 1024,
                              "chat_template": "gemma"}}
    served = start_server(tmp_path, models)
    caches = tmp_path / "home" / "prompt-cache"
    try:
        first = _ask(served, "gemma3:270m", OPENING)
        assert _cached(first) == 0
        (runner,) = served.runner_pids()
        argv = cmdline(runner)
        assert "--swa-full" in argv and "--cache-reuse" in argv
        assert Path(argv[argv.index("--slot-save-path") + 1]).parent == caches
        _unload(served, "gemma3:270m")
        assert "prompt cache: saved" in served.log_text()
        assert list(caches.glob("*/*.slot")), "the unload saved no slot"

        restored = _ask(served, "gemma3:270m", RESUMED)
        # The whole opening came from the saved cache: only the new turn was evaluated.
        assert _cached(restored) >= first["usage"]["prompt_tokens"]
        assert "prompt cache: restored" in served.log_text()

        # Same model file, another context size: another key, so nothing is restored.
        other = _ask(served, "other-shape", RESUMED)
        assert _cached(other) == 0
        assert served.log_text().count("prompt cache: restored") == 1

        _unload(served, "gemma3:270m")
        for saved in caches.glob("*/*.slot"):
            saved.unlink()
        fresh = _ask(served, "gemma3:270m", RESUMED)
        assert _cached(fresh) == 0
        assert restored["choices"][0]["message"]["content"] \
            == fresh["choices"][0]["message"]["content"]
        assert restored["usage"]["completion_tokens"] == fresh["usage"]["completion_tokens"]
    finally:
        served.stop()


def test_no_budget_saves_nothing(tmp_path: Path, gemma_path: Path) -> None:
    served = start_server(tmp_path, {"gemma3:270m": {"source": str(gemma_path),
                                                     "ctx_size": 2048}},
                          env={"SWITCHBOARD_PROMPT_CACHE_BUDGET": "0"})
    try:
        _ask(served, "gemma3:270m", OPENING)
        (runner,) = served.runner_pids()
        assert "--slot-save-path" not in cmdline(runner)
        _unload(served, "gemma3:270m")
        assert not list((tmp_path / "home").glob("prompt-cache/*/*.slot"))
        assert _cached(_ask(served, "gemma3:270m", RESUMED)) == 0
    finally:
        served.stop()


def test_each_of_several_slots_is_saved_and_found_by_its_own_conversation(
        tmp_path: Path, gemma_path: Path) -> None:
    served = start_server(tmp_path, {"gemma3:270m": {"source": str(gemma_path),
                                                     "ctx_size": 2048, "parallel": 2,
                                                     "chat_template": "gemma"}})
    other_opening = [{"role": "system", "content": "You count. " + DOCUMENT.replace("Fact",
                                                                                      "Item")},
                     {"role": "user", "content": "Is 3 odd?"}]
    other_resumed = [*other_opening, {"role": "assistant", "content": "Yes."},
                     {"role": "user", "content": "Is 4 odd?"}]
    try:
        first = _ask(served, "gemma3:270m", OPENING)
        second = _ask(served, "gemma3:270m", other_opening)
        _unload(served, "gemma3:270m")
        assert len(list((tmp_path / "home").glob("prompt-cache/*/*.slot"))) == 2
        # The second conversation first: each finds its own cache, not the newest one.
        assert _cached(_ask(served, "gemma3:270m", other_resumed)) \
            >= second["usage"]["prompt_tokens"]
        assert _cached(_ask(served, "gemma3:270m", RESUMED)) >= first["usage"]["prompt_tokens"]
        assert served.log_text().count("prompt cache: restored") == 2
    finally:
        served.stop()
