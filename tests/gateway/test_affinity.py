"""A conversation's key: the same for every turn of it, different between conversations."""

from __future__ import annotations

from typing import Any

from gateway.affinity import opening_key

SYSTEM = {"role": "system", "content": "You are terse."}
FIRST = {"role": "user", "content": "Tell me about cats."}


def _turns() -> list[list[dict[str, Any]]]:
    return [[SYSTEM, FIRST],
            [SYSTEM, FIRST, {"role": "assistant", "content": "Cats purr."},
             {"role": "user", "content": "And dogs?"}]]


def test_every_turn_of_a_chat_shares_its_key() -> None:
    first, follow_up = (opening_key({"messages": m}) for m in _turns())
    assert first is not None and first == follow_up and len(first) == 8


def test_another_opening_is_another_conversation() -> None:
    other = opening_key({"messages": [SYSTEM, {"role": "user", "content": "Tell me of owls."}]})
    assert other != opening_key({"messages": _turns()[0]})
    assert opening_key({"messages": [FIRST]}) != opening_key({"messages": [SYSTEM, FIRST]})


def test_anthropic_system_and_responses_input_count_in_the_opening() -> None:
    messages = [FIRST]
    assert opening_key({"system": "a", "messages": messages}) != opening_key(
        {"system": "b", "messages": messages})
    long = "x" * 5000
    assert opening_key({"input": long}) == opening_key({"input": long + " and more"})
    assert opening_key({"prompt": [1, 2, 3]}) is not None


def test_a_body_without_a_prompt_has_no_key() -> None:
    assert opening_key({"model": "m"}) is None
    assert opening_key({"messages": []}) is None
