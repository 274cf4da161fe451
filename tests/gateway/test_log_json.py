"""SWITCHBOARD_LOG_FORMAT=json under ``switchboard serve``: every line the server writes is one
JSON object with time, level, logger and event, and a request's line carries its id, model,
status, tokens and duration as keys of their own."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import orjson
import pytest

from gateway.log_json import JsonLineFormatter, current_request_id
from runner.settings import SettingsError, load_settings
from tests.e2e.server import start_fake_server

HI = [{"role": "user", "content": "hi"}]


def test_json_logs_are_one_object_per_line_with_the_requests_fields(
        tmp_path: Path, fake_runner: Path) -> None:
    served = start_fake_server(tmp_path, fake_runner, {"fake": {}},
                               {"SWITCHBOARD_LOG_FORMAT": "json"})
    try:
        answer = httpx.post(f"{served.url}/v1/chat/completions", timeout=30,
                            headers={"x-request-id": "req-42"},
                            json={"model": "fake", "messages": HI})
        assert answer.status_code == 200, answer.text
        # A path with a line break in it stays inside its object.
        assert httpx.get(f"{served.url}/nothing%0Ahere", timeout=10).status_code == 404
    finally:
        served.stop()
    lines = [line for line in served.log_text().splitlines() if line.strip()]
    records = [orjson.loads(line) for line in lines]  # each line parses, whole
    assert len(records) > 5
    for record in records:
        assert {"time", "level", "logger", "event"} <= record.keys(), record
    assert any("listening on" in record["event"] for record in records)
    chat = next(r for r in records if r["event"] == "request" and r.get("request_id") == "req-42")
    assert chat["model"] == "fake" and chat["status"] == 200 and chat["level"] == "info"
    assert chat["path"] == "/v1/chat/completions" and chat["duration_ms"] > 0
    assert any(r.get("path") == "/nothing\nhere" and r["status"] == 404 for r in records)


async def test_a_request_line_carries_the_tokens_the_runner_reported(
        client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="switchboard.access")
    answer = await client.post("/v1/chat/completions", json={"model": "tiny", "messages": HI})
    assert answer.status_code == 200
    record = next(r for r in caplog.records if r.name == "switchboard.access")
    line = orjson.loads(JsonLineFormatter().format(record))
    assert line["event"] == "request" and line["model"] == "tiny"
    assert (line["prompt_tokens"], line["completion_tokens"]) == (7, 2)  # the fake's usage
    assert line["tokens_per_second"] == 615.4
    assert line["request_id"] == answer.headers["x-request-id"]


def test_an_unknown_log_format_is_refused_by_name() -> None:
    with pytest.raises(SettingsError, match="SWITCHBOARD_LOG_FORMAT='xml'"):
        load_settings(environ={"SWITCHBOARD_LOG_FORMAT": "xml"})


def test_only_the_gateways_lines_carry_the_request_id_of_the_request_in_progress() -> None:
    formatter = JsonLineFormatter()
    token = current_request_id.set("req-7")
    try:
        def line(logger: str) -> dict[str, object]:
            record = logging.LogRecord(logger, logging.INFO, __file__, 1, "x", None, None)
            parsed: dict[str, object] = orjson.loads(formatter.format(record))
            return parsed

        assert line("gateway.relay")["request_id"] == "req-7"
        # A runner-side task started during some request (a health monitor) is not that
        # request's, whatever context it inherited.
        assert "request_id" not in line("runner.supervisor")
    finally:
        current_request_id.reset(token)
