"""Log forging through the request path (issue 18): a percent-encoded newline or escape
sequence in a path must not start a second log line or reach an operator's terminal, whether
the request is answered (404) or refused (401)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from tests.e2e.server import Served, start_fake_server, wait_until

KEY = "sk-log-forging-0123456789"
FORGED = ('2026-12-02 05:00:00,000 INFO switchboard.access: 10.0.0.9 "GET /v1/admin" 200 '
          '0.1ms id=forged')
PATHS = (
    "/v1/models%0aFORGED",
    "/v1/models%0d%0a" + quote(FORGED),
    "/v1/models%1b[31mred%1b[0m%1b]0;title%07",
    "/v1/models%c2%85nel%e2%80%a8ls%e2%80%a9ps%0bvt%0cff%1cfs%00nul",
    "/api/ps%0aFORGED",
    "/health%0aFORGED",
)
# One whole access line: what a forged one would have to imitate, and no more.
ACCESS = re.compile(r'\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO switchboard\.access: '
                    r'127\.0\.0\.1 "GET /(?:[^"\\]|\\.)*" (401|404) [\d.]+ms id=(forge-\d+)')


@pytest.fixture(scope="module", params=["with keys", "without keys"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
           fake_runner: Path) -> Iterator[Served]:
    env = {"SWITCHBOARD_API_KEYS": KEY} if request.param == "with keys" else {}
    server = start_fake_server(tmp_path_factory.mktemp("forging"), fake_runner, {"fake": {}},
                               env)
    yield server
    server.stop()


def test_a_hostile_path_makes_exactly_one_log_line_and_no_escape_byte(served: Served) -> None:
    keyed = httpx.get(f"{served.url}/v1/models", headers={"x-request-id": "probe"},
                      timeout=10).status_code == 401
    # The line is written once the response is sent: count from after it.
    assert wait_until(lambda: "id=probe" in served.log_text(), 10)
    # str.splitlines() breaks at every character a viewer might treat as a line end.
    before = len(served.log_text().splitlines())
    for i, path in enumerate(PATHS):
        response = httpx.get(served.url + path, headers={"x-request-id": f"forge-{i}"},
                             timeout=10)
        opened = path.startswith("/health")
        assert response.status_code == (401 if keyed and not opened else 404), path
    assert wait_until(lambda: f"id=forge-{len(PATHS) - 1}" in served.log_text(), 10)
    raw = served.log.read_bytes()
    assert b"\x1b" not in raw and b"\r" not in raw and b"\x00" not in raw
    new = raw.decode().splitlines()[before:]
    matched = [ACCESS.fullmatch(line) for line in new]
    assert [m.group(2) if m else line for m, line in zip(matched, new, strict=True)] == [
        f"forge-{i}" for i in range(len(PATHS))]
    assert "/v1/models\\nFORGED" in new[0] and "\\x1b[31mred" in new[2]
    assert '\\"GET /v1/admin\\" 200' in new[1]  # the forged quotes cannot close ours
