"""Real `switchboard serve --cluster` processes over a real NATS: they list each other in
/api/nodes, a killed one leaves the other's list within its TTL, and fleet settings that
cannot work are refused in one line before anything starts."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import orjson
import pytest
from anthropic.types import MessageParam

from tests.cluster.conftest import NatsServer
from tests.e2e.server import Served, environment, gemma_models, start_server, wait_until
from tests.fakes.registry import FakeRegistry, file_sha256

TTL = "2"


def _names(served: Served) -> list[str]:
    answer = httpx.get(f"{served.url}/api/nodes", timeout=5)
    assert answer.status_code == 200, answer.text
    return [node["name"] for node in answer.json()["nodes"]]


@pytest.fixture
def fleet(tmp_path: Path, gemma_path: Path, nats_server: NatsServer) -> Iterator[list[Served]]:
    nodes = []
    try:
        for name in ("a", "b"):
            nodes.append(start_server(tmp_path / name, gemma_models(gemma_path), {
                "SWITCHBOARD_CLUSTER": nats_server.url, "SWITCHBOARD_NODE_NAME": name,
                "SWITCHBOARD_NODE_TTL": TTL}))
        yield nodes
    finally:
        for served in nodes:
            served.stop()


def test_nodes_list_each_other_and_a_killed_one_goes(fleet: list[Served]) -> None:
    a, b = fleet
    assert wait_until(lambda: _names(a) == ["a", "b"] and _names(b) == ["b", "a"], 15)
    node = httpx.get(f"{a.url}/api/nodes", timeout=5).json()["nodes"][1]
    assert node["url"] == b.url and node["state"] == "up"
    assert node["models"] == ["gemma3:270m"] and node["memory"]["ram_total"] > 0
    listed = subprocess.run([sys.executable, "-m", "gateway.cli", "nodes"], capture_output=True,
                            text=True, timeout=60,
                            env=environment(SWITCHBOARD_PORT=str(a.port)))
    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in listed.stdout.splitlines()]
    assert [row[0] for row in rows] == ["NODE", "a", "b"] and rows[2][2] == "up"
    b.stop(signal.SIGKILL)
    started = time.monotonic()
    assert wait_until(lambda: _names(a) == ["a"], 10)
    assert time.monotonic() - started < float(TTL) * 2 + 1  # TTL plus one refresh, or so


def test_a_node_alone_lists_itself(tmp_path: Path, gemma_path: Path) -> None:
    served = start_server(tmp_path, gemma_models(gemma_path))
    try:
        assert _names(served) == ["local"]
    finally:
        served.stop()


@pytest.mark.parametrize(("args", "env", "says"), [
    (["--host", "0.0.0.0", "--insecure"], {"SWITCHBOARD_CLUSTER_KEY": "k"},
     "SWITCHBOARD_ADVERTISE_URL"),
    (["--host", "0.0.0.0", "--insecure"], {"SWITCHBOARD_ADVERTISE_URL": "http://10.1.1.1:8080"},
     "SWITCHBOARD_CLUSTER_KEY"),
    ([], {"SWITCHBOARD_NODE_NAME": "no spaces"}, "SWITCHBOARD_NODE_NAME"),
])
def test_fleet_settings_that_cannot_work_are_refused_in_one_line(
        tmp_path: Path, args: list[str], env: dict[str, str], says: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--cluster", "nats://127.0.0.1:4222",
         "--port", "0", *args], capture_output=True, text=True, timeout=60,
        env=environment(SWITCHBOARD_HOME=str(tmp_path), **env))
    assert result.returncode == 2
    assert says in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.fixture
def split_fleet(tmp_path: Path, gemma_path: Path,
                nats_server: NatsServer) -> Iterator[list[Served]]:
    """Node a serves "only-a", node b "only-b" and the reranker "rank-b": the same real model
    under other names."""
    nodes = []
    try:
        for name in ("a", "b"):
            models = {f"only-{name}": gemma_models(gemma_path)["gemma3:270m"] | {"aliases": []}}
            if name == "b":
                models["rank-b"] = {"source": str(gemma_path), "ctx_size": 1024,
                                    "reranking": True}
            nodes.append(start_server(tmp_path / name, models, {
                "SWITCHBOARD_CLUSTER": nats_server.url, "SWITCHBOARD_NODE_NAME": name,
                "SWITCHBOARD_NODE_TTL": TTL, "SWITCHBOARD_CLUSTER_KEY": "fleet-key"}))
        yield nodes
    finally:
        for served in nodes:
            served.stop()


def test_a_model_of_another_node_is_served_through_this_one_in_every_family(
        split_fleet: list[Served]) -> None:
    a, b = split_fleet
    assert wait_until(lambda: _names(a) == ["a", "b"], 15)
    models = [m["id"] for m in httpx.get(f"{a.url}/v1/models", timeout=5).json()["data"]]
    assert models == ["only-a", "only-b", "rank-b"]
    chat = httpx.post(f"{a.url}/v1/chat/completions", timeout=120, json={
        "model": "only-b", "messages": [{"role": "user", "content": "Say hi"}],
        "max_tokens": 8})
    assert chat.status_code == 200, chat.text
    assert chat.json()["model"] == "only-b" and chat.json()["choices"][0]["message"]["content"]
    # Translated once, on a: b sees an OpenAI-shaped request and answers it as such.
    ollama = httpx.post(f"{a.url}/api/chat", timeout=120, json={
        "model": "only-b", "messages": [{"role": "user", "content": "Say hi"}],
        "stream": False, "options": {"num_predict": 8}, "keep_alive": "10m"})
    assert ollama.status_code == 200, ollama.text
    assert ollama.json()["done"] is True and ollama.json()["message"]["content"]
    # keep_alive is ours, not the runner's: a takes it out of the body, b applies it.
    (held,) = httpx.get(f"{b.url}/api/ps", timeout=5).json()["models"]
    assert held["keep_alive"] == 600
    streamed = httpx.post(f"{a.url}/v1/chat/completions", timeout=120, json={
        "model": "only-b", "messages": [{"role": "user", "content": "Say hi"}],
        "max_tokens": 8, "stream": True})
    assert streamed.status_code == 200 and streamed.text.rstrip().endswith("data: [DONE]")
    # One runner in the fleet, on b, and both nodes' /api/ps say so.
    ran = [[(r["name"], r["node"]) for r in
            httpx.get(f"{node.url}/api/ps", timeout=5).json()["models"]] for node in (a, b)]
    assert ran[1] == [("only-b", "b")]
    assert wait_until(lambda: [(r["name"], r["node"]) for r in httpx.get(
        f"{a.url}/api/ps", timeout=5).json()["models"]] == [("only-b", "b")], 10)


def test_the_other_api_families_cross_a_hop_translated_once_on_the_first_node(
        split_fleet: list[Served]) -> None:
    a, b = split_fleet
    assert wait_until(lambda: _names(a) == ["a", "b"], 15)
    hi: list[MessageParam] = [{"role": "user", "content": "Say hi"}]
    with anthropic.Anthropic(base_url=a.url, api_key="unused", max_retries=0,
                             timeout=120) as claude:
        message = claude.messages.create(model="only-b", max_tokens=8, messages=hi)
        assert message.model == "only-b" and message.content[0].type == "text"
        with claude.messages.stream(model="only-b", max_tokens=8, messages=hi) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message().content[0]
        assert text and final.type == "text" and final.text == text
        assert claude.messages.count_tokens(model="only-b", messages=hi).input_tokens > 0
    with openai.OpenAI(base_url=f"{a.url}/v1", api_key="unused", max_retries=0,
                       timeout=120) as oai:
        response = oai.responses.create(model="only-b", input="Say hi", max_output_tokens=8)
        assert response.status == "completed" and response.output_text
        events = [e.type for e in oai.responses.create(
            model="only-b", input="Say hi", max_output_tokens=8, stream=True)]
        assert events[0] == "response.created" and events[-1] == "response.completed"
    counted = httpx.post(f"{a.url}/v1/responses/input_tokens", timeout=60,
                         json={"model": "only-b", "input": "hello there"})
    assert counted.status_code == 200 and counted.json()["input_tokens"] > 0
    documents = ["A cat is a small feline.", "Paris is in France."]
    ranked = httpx.post(f"{a.url}/v1/rerank", timeout=120, json={
        "model": "rank-b", "query": "What is a cat?", "documents": documents})
    assert ranked.status_code == 200, ranked.text
    assert sorted(r["index"] for r in ranked.json()["results"]) == [0, 1]
    tokens = httpx.post(f"{a.url}/tokenize", timeout=60,
                        json={"model": "only-b", "content": "hello world"}).json()["tokens"]
    assert tokens and all(isinstance(t, int) for t in tokens)
    said = httpx.post(f"{a.url}/detokenize", timeout=60,
                      json={"model": "only-b", "tokens": tokens}).json()["content"]
    assert said.strip() == "hello world"
    # Every runner is b's: a ran nothing of its own.
    ran = sorted((r["name"], r["node"]) for r in
                 httpx.get(f"{b.url}/api/ps", timeout=5).json()["models"])
    assert ran == [("only-b", "b"), ("rank-b", "b")]
    assert "Traceback" not in a.log_text() + b.log_text()


def test_a_forged_hop_without_the_cluster_key_is_refused(split_fleet: list[Served]) -> None:
    _, b = split_fleet
    forged = httpx.post(f"{b.url}/_node/chat/v1/chat/completions", timeout=10,
                        json={"model": "only-b", "messages": [{"role": "user", "content": "x"}]})
    assert forged.status_code == 401
    assert httpx.get(f"{b.url}/api/ps", timeout=5).json()["models"] == []


def test_a_node_dead_before_it_answered_costs_the_client_nothing(
        tmp_path: Path, gemma_path: Path, nats_server: NatsServer) -> None:
    # Both nodes have the model; only b has it loaded, so a sends the request there.
    model = {"shared": gemma_models(gemma_path)["gemma3:270m"] | {"aliases": []}}
    nodes = []
    try:
        for name in ("a", "b"):
            nodes.append(start_server(tmp_path / name, model, {
                "SWITCHBOARD_CLUSTER": nats_server.url, "SWITCHBOARD_NODE_NAME": name,
                "SWITCHBOARD_NODE_TTL": "8", "SWITCHBOARD_CLUSTER_KEY": "fleet-key"}))
        a, b = nodes
        ask = {"model": "shared", "messages": [{"role": "user", "content": "Say hi"}],
               "max_tokens": 4}
        assert httpx.post(f"{b.url}/v1/chat/completions", json=ask, timeout=120).status_code \
            == 200

        def b_has_a_copy() -> bool:
            listed = httpx.get(f"{a.url}/api/nodes", timeout=5).json()["nodes"]
            return any(n["name"] == "b" and n["runners"] for n in listed)

        assert wait_until(b_has_a_copy, 15)
        b.stop(signal.SIGKILL)  # still in a's view for up to its TTL
        answer = httpx.post(f"{a.url}/v1/chat/completions", json=ask, timeout=120)
        assert answer.status_code == 200, answer.text
        assert "node b did not answer" in a.log_text()
        ps = httpx.get(f"{a.url}/api/ps", timeout=5).json()["models"]
        assert [m["name"] for m in ps] == ["shared"]  # served here, the second time
    finally:
        for served in nodes:
            served.stop()


def test_a_model_only_on_a_node_that_just_died_is_a_503_to_retry_not_a_404(
        split_fleet: list[Served]) -> None:
    a, b = split_fleet
    assert wait_until(lambda: _names(a) == ["a", "b"], 15)
    b.stop(signal.SIGKILL)  # still in a's view for up to its TTL
    answer = httpx.post(f"{a.url}/v1/chat/completions", timeout=60, json={
        "model": "only-b", "messages": [{"role": "user", "content": "Say hi"}]})
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"]["code"] == "nodes_unreachable"
    assert "node(s) b" in answer.json()["error"]["message"]
    assert int(answer.headers["retry-after"]) >= 1
    # Once b's record is gone, the model is unknown to the fleet: now a 404.
    assert wait_until(lambda: _names(a) == ["a"], 10)
    gone = httpx.post(f"{a.url}/v1/chat/completions", timeout=60, json={
        "model": "only-b", "messages": [{"role": "user", "content": "Say hi"}]})
    assert gone.status_code == 404


@pytest.mark.parametrize(("route", "body", "ends_with"), [
    ("/v1/chat/completions", {"stream": True, "max_tokens": 2000}, '"error"'),
    ("/api/chat", {"stream": True, "options": {"num_predict": 2000}}, '"error"'),
])
def test_a_node_killed_mid_stream_ends_the_stream_with_an_error_in_its_family(
        split_fleet: list[Served], route: str, body: dict[str, object], ends_with: str) -> None:
    a, b = split_fleet
    assert wait_until(lambda: _names(a) == ["a", "b"], 15)
    ask = {"model": "only-b", "messages": [{"role": "user", "content": "Count to a thousand"}],
           **body}
    lines: list[str] = []
    with httpx.stream("POST", f"{a.url}{route}", json=ask, timeout=60) as answer:
        assert answer.status_code == 200
        for line in answer.iter_lines():
            if line.strip():
                lines.append(line)
            if len(lines) == 3:
                b.stop(signal.SIGKILL)
    assert len(lines) > 3, lines  # it went on after the kill, to say what happened
    assert ends_with in lines[-1] and "failed mid-stream" in lines[-1], lines[-3:]


def _copies(served: Served) -> list[str]:
    """The nodes running a copy, as ``served`` lists the fleet's runners."""
    return sorted(r["node"] for r in httpx.get(f"{served.url}/api/ps", timeout=5).json()["models"])


def _shared_fleet(tmp_path: Path, gemma_path: Path, nats_server: NatsServer,
                  **model: object) -> list[Served]:
    config = {"shared": gemma_models(gemma_path)["gemma3:270m"] | {"aliases": [], **model}}
    nodes = []
    try:
        for name in ("a", "b"):
            nodes.append(start_server(tmp_path / name, config, {
                "SWITCHBOARD_CLUSTER": nats_server.url, "SWITCHBOARD_NODE_NAME": name,
                "SWITCHBOARD_NODE_TTL": TTL, "SWITCHBOARD_CLUSTER_KEY": "fleet-key"}))
        assert wait_until(lambda: _names(nodes[0]) == ["a", "b"]
                          and _names(nodes[1]) == ["b", "a"], 15)
    except BaseException:
        for served in nodes:
            served.stop()
        raise
    return nodes


def _ask_all(urls: list[str], max_tokens: int) -> list[int]:
    """One chat per URL, all at once; their status codes."""
    import concurrent.futures

    ask = {"model": "shared", "messages": [{"role": "user", "content": "Count to fifty"}],
           "max_tokens": max_tokens}
    with concurrent.futures.ThreadPoolExecutor(len(urls)) as pool:
        answers = pool.map(lambda url: httpx.post(f"{url}/v1/chat/completions", json=ask,
                                                   timeout=120).status_code, urls)
        return list(answers)


def test_a_first_request_on_two_nodes_at_once_loads_one_copy_for_the_fleet(
        tmp_path: Path, gemma_path: Path, nats_server: NatsServer) -> None:
    a, b = _shared_fleet(tmp_path, gemma_path, nats_server)
    try:
        assert _ask_all([a.url, b.url, a.url, b.url], 8) == [200] * 4
        # replicas 1: one load, claimed in NATS (a's view of b lags by up to a heartbeat)
        assert wait_until(lambda: len(_copies(a)) == 1, 5), _copies(a)
        assert _copies(a) == _copies(b) and "runner start" in a.log_text() + b.log_text()
        assert (a.log_text() + b.log_text()).count("runner start") == 1
        loader = _copies(a)[0]
        other = b if loader == "a" else a
        assert [r["name"] for r in httpx.get(f"{other.url}/api/ps", timeout=5).json()[
            "models"]] == ["shared"]  # listed there too, as the other node's
    finally:
        a.stop()
        b.stop()


def test_a_model_of_two_replicas_runs_a_second_copy_when_the_first_is_full(
        tmp_path: Path, gemma_path: Path, nats_server: NatsServer) -> None:
    a, b = _shared_fleet(tmp_path, gemma_path, nats_server, replicas=2, parallel=1)
    try:
        assert _ask_all([a.url], 4) == [200]
        assert _copies(a) == ["a"]
        # Both at a: the first copy takes one, the other starts a copy on b (the only node
        # without one), rather than queueing behind it.
        assert _ask_all([a.url] * 3, 48) == [200] * 3
        assert wait_until(lambda: _copies(a) == ["a", "b"], 10), _copies(a)
        assert "new copy on node b" in a.log_text()
        # Two copies is the cap: more load queues at them, with no third load anywhere.
        assert _ask_all([a.url, b.url] * 3, 16) == [200] * 6
        assert _copies(b) == ["a", "b"]
    finally:
        a.stop()
        b.stop()



def test_a_conversations_follow_up_at_another_node_finds_its_prompt_in_cache(
        tmp_path: Path, gemma_path: Path, nats_server: NatsServer) -> None:
    a, b = _shared_fleet(tmp_path, gemma_path, nats_server, replicas=2, parallel=1)
    try:
        assert _ask_all([a.url], 4) == [200]  # a copy on a; then, a full one: one on b
        assert _ask_all([a.url] * 3, 48) == [200] * 3
        assert wait_until(lambda: _copies(a) == ["a", "b"] == _copies(b), 10), _copies(a)
        story = "The lighthouse keeper counted ships each night and wrote them down. " * 9
        for n in range(4):  # without affinity, each follow-up is "a free copy here", on b
            opening = [{"role": "system", "content": f"Conversation {n}. Answer briefly."},
                       {"role": "user", "content": story}]
            first = httpx.post(f"{a.url}/v1/chat/completions", timeout=120, json={
                "model": "shared", "messages": opening, "max_tokens": 4, "temperature": 0})
            assert first.status_code == 200, first.text
            said = first.json()["choices"][0]["message"]["content"]
            follow_up = httpx.post(f"{b.url}/v1/chat/completions", timeout=120, json={
                "model": "shared", "max_tokens": 4, "temperature": 0, "messages": [
                    *opening, {"role": "assistant", "content": said},
                    {"role": "user", "content": "How many ships?"}]})
            assert follow_up.status_code == 200, follow_up.text
            prompt = first.json()["usage"]["prompt_tokens"]
            cached = follow_up.json()["usage"]["prompt_tokens_details"]["cached_tokens"]
            assert cached >= prompt - 8, (n, prompt, cached)
    finally:
        a.stop()
        b.stop()


def test_two_nodes_pulling_one_model_into_one_store_at_once_corrupt_nothing(
        tmp_path: Path, gemma_path: Path, nats_server: NatsServer,
        tiny_registry: FakeRegistry) -> None:
    # The fleet's store on shared storage (an NFS home): both nodes pull the same model at
    # the same moment; the download lock serialises them, the second finds the blob there.
    tiny_registry.rate = 150e6  # about two seconds of pull, so the two overlap
    shared = tmp_path / "shared-home"
    nodes = []
    try:
        for name in ("a", "b"):
            nodes.append(start_server(tmp_path / name, gemma_models(gemma_path), {
                "SWITCHBOARD_CLUSTER": nats_server.url, "SWITCHBOARD_NODE_NAME": name,
                "SWITCHBOARD_NODE_TTL": TTL, "SWITCHBOARD_HOME": str(shared),
                "SWITCHBOARD_REGISTRY": tiny_registry.host}))
        import concurrent.futures

        def pull(served: Served) -> list[dict[str, object]]:
            answer = httpx.post(f"{served.url}/api/pull", timeout=120,
                                json={"model": "tiny", "insecure": True, "stream": True})
            assert answer.status_code == 200, answer.text
            return [orjson.loads(line) for line in answer.text.splitlines() if line.strip()]

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            both = list(pool.map(pull, nodes))
        for events in both:
            assert events[-1] == {"status": "success"}, events[-3:]
        statuses = [str(e.get("status", "")) for events in both for e in events]
        assert any(s.startswith("waiting for another process") for s in statuses)  # overlapped
        blobs = list((shared / "models" / "blobs").iterdir())
        assert [file_sha256(blob) for blob in blobs if blob.stat().st_size > 1 << 20] == [
            file_sha256(gemma_path)]
        assert not list((shared / "models" / "partial").glob("*.partial"))
        for served in nodes:
            assert "tiny:latest" in [m["name"] for m in httpx.get(
                f"{served.url}/api/tags", timeout=5).json()["models"]]
        chat = httpx.post(f"{nodes[1].url}/v1/chat/completions", timeout=120, json={
            "model": "tiny", "messages": [{"role": "user", "content": "Say hi"}],
            "max_tokens": 4})
        assert chat.status_code == 200, chat.text
    finally:
        tiny_registry.rate = None
        for served in nodes:
            served.stop()


@contextlib.contextmanager
def _slot_held(url: str, model: str) -> Iterator[None]:
    """A stream that keeps ``model``'s one slot busy until the block ends."""
    with httpx.stream("POST", f"{url}/v1/chat/completions", timeout=60, json={
            "model": model, "messages": [{"role": "user", "content": "Count to a thousand"}],
            "max_tokens": 4000, "stream": True}) as answer:
        assert answer.status_code == 200
        lines = answer.iter_lines()  # held: a dropped iterator would close the stream
        while not next(lines).startswith("data: "):  # past the load's pings: it runs
            pass
        yield


def test_a_model_no_node_has_room_for_is_a_503_with_retry_after_and_loads_where_room_frees(
        tmp_path: Path, gemma_path: Path, nats_server: NatsServer) -> None:
    one = gemma_models(gemma_path)["gemma3:270m"] | {"aliases": [], "parallel": 1}
    models = {name: one for name in ("m1", "m2", "m3")}
    nodes = []
    try:
        for name in ("a", "b"):  # room for one runner each
            nodes.append(start_server(tmp_path / name, models, {
                "SWITCHBOARD_CLUSTER": nats_server.url, "SWITCHBOARD_NODE_NAME": name,
                "SWITCHBOARD_NODE_TTL": TTL, "SWITCHBOARD_MAX_LOADED_MODELS": "1"}))
        a, b = nodes
        assert wait_until(lambda: _names(a) == ["a", "b"], 15)
        with contextlib.ExitStack() as held:
            held.enter_context(_slot_held(a.url, "m1"))
            b_held = held.enter_context(contextlib.ExitStack())
            b_held.enter_context(_slot_held(b.url, "m2"))
            assert wait_until(lambda: _copies(a) == ["a", "b"], 10)
            ask = {"model": "m3", "messages": [{"role": "user", "content": "Say hi"}],
                   "max_tokens": 4}
            refused = httpx.post(f"{a.url}/v1/chat/completions", json=ask, timeout=60)
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "no_room"
            assert int(refused.headers["retry-after"]) > 0
            ollama = httpx.post(f"{a.url}/api/chat", timeout=60, json={
                "model": "m3", "messages": ask["messages"], "stream": False})
            assert ollama.status_code == 503 and "no room for model 'm3'" in ollama.json()["error"]
            b_held.close()  # b's runner goes idle: b has room, by unloading it

            def b_has_room() -> bool:
                listed = httpx.get(f"{a.url}/api/nodes", timeout=5).json()["nodes"]
                return any(n["name"] == "b" and n["memory"]["room"] > 0 for n in listed)

            assert wait_until(b_has_room, 15)
            served = httpx.post(f"{a.url}/v1/chat/completions", json=ask, timeout=120)
            assert served.status_code == 200, served.text
            ps = httpx.get(f"{b.url}/api/ps", timeout=5).json()["models"]
            assert [(m["name"], m["node"]) for m in ps if m["node"] == "b"] == [("m3", "b")]
    finally:
        for served_node in nodes:
            served_node.stop()
