"""The relay's SSE framing: whole events out, the start of a split one held back, and the
per-event bound of SWITCHBOARD_MAX_ANSWER_BYTES."""

from __future__ import annotations

import orjson
import pytest

from gateway.relay import Relay, _Events, _EventTooLargeError, _has_error_event


def test_whole_events_pass_as_they_are_and_nothing_is_held() -> None:
    events = _Events(100)
    chunk = b"data: 1\n\ndata: 2\n\n"
    assert events.whole(chunk) is chunk  # no copy on the common path
    assert events.open == 0 and events.rest() == b""


def test_an_event_split_across_chunks_goes_out_whole_once_its_separator_comes() -> None:
    events = _Events(100)
    assert events.whole(b"data: 1\n\ndata: ") == b"data: 1\n\n"
    assert events.whole(b"tw") == b""
    assert events.open == len(b"data: tw")
    assert events.whole(b"o\n\ndata: 3") == b"data: two\n\n"
    assert events.rest() == b"data: 3"


def test_an_event_past_the_limit_raises_however_it_is_cut_up() -> None:
    events = _Events(20)
    assert events.whole(b"data: " + b"x" * 10) == b""
    with pytest.raises(_EventTooLargeError):
        events.whole(b"x" * 10)  # 26 bytes open, no separator yet
    with pytest.raises(_EventTooLargeError):
        _Events(20).whole(b"data: 1\n\n" + b"data: " + b"y" * 30 + b"\n\n")


def test_many_small_events_in_one_chunk_larger_than_the_limit_are_fine() -> None:
    chunk = b"data: 12345\n\n" * 10  # 130 bytes in all, each event 11
    assert _Events(20).whole(chunk) == chunk


def test_no_limit_means_none() -> None:
    assert _Events(None).whole(b"x" * 100_000) == b""


def test_an_error_event_after_a_data_event_in_one_read_is_found_and_normalised() -> None:
    batch = (b'data: {"choices":[]}\n\n'
             b'data: {"error":{"code":500,"message":"boom","type":"server_error"}}\n\n')
    assert _has_error_event(batch)
    first, second, end = Relay._normalise_events(batch).split(b"\n\n")
    assert first == b'data: {"choices":[]}' and end == b""
    error = orjson.loads(second.removeprefix(b"data: "))["error"]
    assert error["message"] == "boom" and not isinstance(error["code"], int)


def test_old_style_error_lines_become_data_events() -> None:
    batch = b'data: {"choices":[]}\n\nerror: {"code":500,"message":"boom"}\n\n'
    assert _has_error_event(batch)
    assert Relay._normalise_events(batch).split(b"\n\n")[1].startswith(b'data: {"error"')


def test_a_token_that_reads_like_an_error_is_not_one() -> None:
    # Inside a JSON string the quotes are escaped, so the prefix cannot appear.
    assert not _has_error_event(b'data: {"delta":{"content":"\\n\\ndata: {\\"error\\""}}\n\n')
