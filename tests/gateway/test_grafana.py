"""configs/grafana/switchboard.json asks only for what /metrics exports: every metric a query
names is a series the gateway serves, every label it selects or groups by is one of that
metric's, and the panels cover what an operator reads first."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.fake_service import FakeModelService
from tests.fakes.runners import runner_info

DASHBOARD = Path(__file__).parents[2] / "configs" / "grafana" / "switchboard.json"
METRIC = re.compile(r"\bswitchboard_[a-z_]+\b")
SELECTOR = re.compile(r"(switchboard_[a-z_]+)\{([^}]*)\}")
GROUPING = re.compile(r"\b(?:by|on|group_left|group_right)\s*\(([^)]*)\)")
# Labels Prometheus adds to every scraped series, and the one a histogram's buckets carry.
SCRAPE_LABELS = {"instance", "job", "le"}
COVERED = {  # what the issue asks the dashboard to show, by the metric that shows it
    "requests": "switchboard_requests_total",
    "time to first token": "switchboard_time_to_first_token_seconds_bucket",
    "queue wait": "switchboard_queue_wait_seconds_bucket",
    "tokens per second": "switchboard_generation_tokens_per_second_bucket",
    "loads": "switchboard_runner_load_seconds_count",
    "memory per runner": "switchboard_runner_memory_bytes",
    "memory per node": "switchboard_memory_bytes",
}


def _queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [target["expr"] for panel in dashboard["panels"]
               for target in panel.get("targets", ())]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            queries.append(query["query"])
    return queries


async def _exported(client: httpx.AsyncClient, service: FakeModelService
                    ) -> dict[str, set[str]]:
    """Every series name /metrics serves once each metric has a sample, with its labels."""
    for stream in (False, True):
        answer = await client.post("/v1/chat/completions", json={
            "model": "tiny", "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
        assert answer.status_code == 200, answer.text
    for observer in service.load_observers:
        observer("tiny", "chat", 1.0)
    service.runners = [runner_info("tiny")]
    text = (await client.get("/metrics")).text
    exported: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            exported.setdefault(sample.name, set()).update(sample.labels)
    return exported


async def test_every_dashboard_query_names_an_exported_metric_and_its_labels(
        client: httpx.AsyncClient, service: FakeModelService) -> None:
    exported = await _exported(client, service)
    queries = _queries()
    assert queries
    for query in queries:
        names = METRIC.findall(query)
        assert names, f"a query names no switchboard metric: {query}"
        for name in names:
            assert name in exported, f"{name} is not exported (query: {query})"
        for name, matchers in SELECTOR.findall(query):
            for label in re.findall(r"([a-z_]+)\s*[!=]~?", matchers):
                assert label in exported[name], f"{name} has no label {label!r}"
        known = SCRAPE_LABELS.union(*(exported[name] for name in names))
        for group in GROUPING.findall(query):
            for label in filter(None, (part.strip() for part in group.split(","))):
                assert label in known, f"{label!r} is no label of {names} (query: {query})"


def test_the_dashboard_covers_requests_latency_tokens_loads_and_memory() -> None:
    named = {name for query in _queries() for name in METRIC.findall(query)}
    missing = [topic for topic, metric in COVERED.items() if metric not in named]
    assert not missing, f"no panel shows {missing}"
