"""The operator console in a real browser (Debian's headless Chromium, driven by Playwright)
over a served gateway with auth on, the real runner and model, and a registry on 127.0.0.1.
Each state is saved as a screenshot under the test's tmp directory."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.server import Served, gemma_models, start_server
from tests.fakes.registry import FakeRegistry

playwright = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.usefixtures("real_variants"),
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium: apt-get install chromium "
                                                "(make test installs it when run as root)"),
]
KEY = "sk-console-0123456789"
ROW = 'tr[data-runner="gemma3:270m"]'


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, gemma_path: Path,
           tiny_registry: FakeRegistry) -> Iterator[Served]:
    tiny_registry.rate = 100e6  # a pull that takes a few seconds, so its progress shows
    root = tmp_path_factory.mktemp("console")
    server = start_server(root, gemma_models(gemma_path), {
        "SWITCHBOARD_API_KEYS": KEY, "SWITCHBOARD_HOME": str(root / "home"),
        "SWITCHBOARD_REGISTRY": tiny_registry.host, "SWITCHBOARD_EVENTS_SAMPLE": "0.5s"})
    yield server
    server.stop()


def _chat(served: Served) -> None:
    httpx.post(f"{served.url}/v1/chat/completions", timeout=120,
               headers={"Authorization": f"Bearer {KEY}"},
               json={"model": "gemma3:270m", "max_tokens": 4,
                     "messages": [{"role": "user", "content": "hi"}]}).raise_for_status()


def test_the_console_shows_loads_logs_unloads_and_pulls(served: Served, tmp_path: Path) -> None:
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.set_default_timeout(30_000)
        try:
            page.goto(f"{served.url}/ui/")
            # Auth is on: the page asks for a key before it can listen.
            page.wait_for_selector("#key-form:not([hidden])")
            page.screenshot(path=shots / "1-asks-for-key.png")
            page.fill("#key", KEY)
            page.click("#key-form button")
            page.wait_for_selector('#status[data-status="live"]')
            # Alone, the fleet is this node: listed up, with its model.
            page.wait_for_selector('#nodes tr[data-node="local"][data-state="up"]')
            assert page.inner_text('#nodes tr[data-node="local"] td:nth-child(5)') == "1"

            # A request loads the default model: the page shows it starting, then ready.
            request = threading.Thread(target=_chat, args=(served,))
            request.start()
            page.wait_for_selector(f'{ROW}[data-state="starting"]')
            page.screenshot(path=shots / "2-loading.png")
            page.wait_for_selector(f'{ROW}[data-state="ready"]')
            request.join(120)
            history = page.inner_text(f"{ROW} .history")
            assert history == "starting → ready"
            page.wait_for_selector('#requests tbody tr[data-status="200"]')
            assert "gemma3:270m" in page.inner_text("#requests tbody")
            page.screenshot(path=shots / "3-ready.png")

            # Its logs: what it printed so far, then new lines as another request runs.
            page.click(f"{ROW} button.logs")
            page.wait_for_function("document.getElementById('logs').textContent.length > 0")
            before = page.evaluate("document.getElementById('logs').textContent.length")
            _chat(served)
            page.wait_for_function(
                f"document.getElementById('logs').textContent.length > {before}")
            assert "llama" in page.inner_text("#logs") or "srv" in page.inner_text("#logs")
            page.screenshot(path=shots / "4-logs.png")

            # Unload: the row goes.
            page.click(f"{ROW} button.unload")
            page.wait_for_selector(ROW, state="detached")
            page.screenshot(path=shots / "5-unloaded.png")

            # Load (a preload with a keep-alive) brings it back; then it is unloaded again.
            page.select_option("#load-model", "gemma3:270m")
            page.fill("#load-keep", "10m")
            page.click("#load")
            page.wait_for_selector(f'{ROW}[data-state="ready"]')
            ps = httpx.get(f"{served.url}/api/ps", timeout=10,
                           headers={"Authorization": f"Bearer {KEY}"}).json()["models"]
            assert [m["keep_alive"] for m in ps] == [600.0]
            page.click(f"{ROW} button.unload")
            page.wait_for_selector(ROW, state="detached")

            # A pull from the registry, its progress to 100%.
            page.fill("#pull-name", "tiny")
            page.check("#pull-insecure")
            page.click("#pull")
            page.wait_for_function(
                "document.getElementById('pull-status').textContent === 'success'")
            assert page.inner_text("#pull-percent") == "100%"
            assert page.eval_on_selector("#pull-bar", "bar => bar.value") == 100
            page.wait_for_selector('#load-model option[value="tiny:latest"]', state="attached")
            page.screenshot(path=shots / "6-pulled.png")
        finally:
            browser.close()
    print(f"console screenshots: {shots}")
    assert len(list(shots.glob("*.png"))) == 6


def test_the_console_lists_every_model_charts_its_traffic_and_chats(
        served: Served, tmp_path: Path) -> None:
    model = 'tr[data-model="gemma3:270m"]'
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1800})
        page.set_default_timeout(60_000)
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        try:
            page.goto(f"{served.url}/ui/")
            page.wait_for_selector("#key-form:not([hidden])")
            page.fill("#key", KEY)
            page.click("#key-form button")
            page.wait_for_selector('#status[data-status="live"]')
            # Every model, loaded or not, with the context its runner starts with.
            page.wait_for_selector(model)
            assert page.inner_text(f"{model} td:nth-child(3)") == "2048"  # configured
            if page.get_attribute(model, "data-state") != "not-loaded":
                page.click(f"{model} button.unload")
                page.wait_for_selector(f'{model}[data-state="not-loaded"]')
            assert page.inner_text(f"{model} .state") == "not loaded"

            # Load from the models panel: ready, with its expiry counting down.
            page.click(f"{model} button.load")
            page.wait_for_selector(f'{model}[data-state="ready"]')
            page.wait_for_function(  # the expiry is set once the load's request has ended
                f"/^in \\d+ (s|minutes?)$/.test(document.querySelector('{model} .expires')"
                ".textContent)")

            # A playground exchange: the answer streams in, then its speed is shown.
            requests_before = int(page.get_attribute("#chart-requests", "data-total") or 0)
            tokens_before = int(page.get_attribute("#chart-tokens", "data-total") or 0)
            page.click(f"{model} button.chat")
            assert page.eval_on_selector("#chat-model", "s => s.value") == "gemma3:270m"
            page.fill("#chat-input", "The capital of France is")
            page.press("#chat-input", "Enter")
            page.wait_for_selector('.msg.assistant[data-done="true"]')
            assert page.inner_text(".msg.user .text") == "The capital of France is"
            assert page.inner_text(".msg.assistant .text").strip()
            assert "tokens/s" in page.inner_text("#chat-stats")

            # The charts moved: the exchange is counted, drawn on uPlot's canvas.
            page.wait_for_function(
                f"+document.getElementById('chart-requests').dataset.total > {requests_before}"
                f" && +document.getElementById('chart-tokens').dataset.total > {tokens_before}")
            page.wait_for_function(
                "+document.getElementById('chart-memory').dataset.total > 1")
            for chart in ("tokens", "requests", "memory"):
                assert page.locator(f"#chart-{chart} canvas").count() == 1
            page.screenshot(path=tmp_path / "7-charts-and-playground.png", full_page=True)

            # The logs follow the runner through its unload, and stay.
            page.click(f"{model} button.logs")
            page.wait_for_function("document.getElementById('logs').textContent.length > 0")
            page.click(f"{model} button.unload")
            page.wait_for_selector(f'{model}[data-state="not-loaded"]')
            page.wait_for_function(
                "document.getElementById('logs').textContent.includes('runner stopped')")
            assert "srv" in page.inner_text("#logs")  # its own lines are still there
            assert page.inner_text("#logs-of") == "gemma3:270m (stopped)"
            page.screenshot(path=tmp_path / "8-logs-after-unload.png", full_page=True)
        finally:
            browser.close()
    assert errors == []
