from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from runner import process
from runner.errors import RunnerStartError
from runner.model_defaults import sampling_args
from runner.modes import RunnerMode
from runner.payloads import Payloads, extract
from runner.process import LaunchSpec, RunnerProcess, RunnerState, build_argv
from runner.variants import order_variants, read_cpu_flags


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); reaped means gone from the table entirely.
    return True


@pytest.fixture(scope="module")
def payloads(tmp_path_factory: pytest.TempPathFactory,
             real_variants: dict[str, Path]) -> Payloads:
    tmp = tmp_path_factory.mktemp("payloads")
    return extract(tmp, tmp / "home")


def _spec(model_path: Path, *extra: str) -> LaunchSpec:
    return LaunchSpec(model="gemma3:270m", model_path=model_path, ctx_size=512, parallel=1,
                      extra_args=tuple(extra))


def _runner(spec: LaunchSpec, binary: Path, load_timeout: float = 120.0) -> RunnerProcess:
    return RunnerProcess(spec, binary, "test", {"PATH": "/usr/bin:/bin"}, load_timeout, 2.0)


@pytest.fixture
async def real_runner(payloads: Payloads, gemma_path: Path) -> AsyncIterator[RunnerProcess]:
    variant = order_variants(payloads.variants(), read_cpu_flags())[0]
    runner = _runner(_spec(gemma_path), payloads.binary(variant))
    await runner.start()
    yield runner
    await runner.stop()


def test_build_argv_passes_alias_loopback_and_only_set_flags(tmp_path: Path) -> None:
    argv = build_argv(tmp_path / "llama-server", _spec(tmp_path / "m.gguf", "--flash-attn", "on"),
                      4242)
    assert argv[argv.index("--alias") + 1] == "gemma3:270m"
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--port") + 1] == "4242"
    assert "--n-gpu-layers" not in argv and "--threads" not in argv
    assert argv[-2:] == ["--flash-attn", "on"]
    assert not any("key" in arg for arg in argv), "the API key must not be visible in ps"
    assert "--jinja" in argv


def test_build_argv_runs_a_named_builtin_template_without_jinja(tmp_path: Path) -> None:
    named = build_argv(tmp_path / "llama-server",
                       _spec(tmp_path / "m.gguf", "--chat-template", "chatml"), 4242)
    assert "--no-jinja" in named and "--jinja" not in named
    literal = build_argv(tmp_path / "llama-server",
                         _spec(tmp_path / "m.gguf", "--chat-template", "{{ x }}"), 4242)
    assert "--jinja" in literal


def test_build_argv_passes_a_template_file(tmp_path: Path) -> None:
    spec = LaunchSpec(model="m", model_path=tmp_path / "m.gguf", ctx_size=512, parallel=1,
                      chat_template=tmp_path / "t.jinja")
    argv = build_argv(tmp_path / "llama-server", spec, 1)
    assert argv[argv.index("--chat-template-file") + 1] == str(tmp_path / "t.jinja")


def test_build_argv_loads_a_models_companions_and_sampling_defaults(tmp_path: Path) -> None:
    spec = LaunchSpec(model="m", model_path=tmp_path / "m.gguf", ctx_size=512, parallel=1,
                      sampling=sampling_args({"num_predict": 3, "temperature": 0}),
                      projector=tmp_path / "p.gguf", draft=tmp_path / "d.gguf",
                      adapters=((tmp_path / "a.gguf", 0.5), (tmp_path / "b.gguf", 1.0)))
    argv = build_argv(tmp_path / "llama-server", spec, 1)
    assert argv[argv.index("--n-predict") + 1] == "3" and argv[argv.index("--temp") + 1] == "0.0"
    assert argv[argv.index("--mmproj") + 1] == str(tmp_path / "p.gguf")
    assert argv[argv.index("--model-draft") + 1] == str(tmp_path / "d.gguf")
    assert argv[argv.index("--lora-scaled") + 1] == f"{tmp_path}/a.gguf:0.5,{tmp_path}/b.gguf:1"
    embed = build_argv(tmp_path / "llama-server", LaunchSpec(
        model="m", model_path=tmp_path / "m.gguf", ctx_size=512, parallel=1,
        mode=RunnerMode.EMBEDDINGS, sampling=("--n-predict", "3"),
        projector=tmp_path / "p.gguf"), 1)
    assert "--n-predict" not in embed and "--mmproj" not in embed  # generation's only


def test_build_argv_passes_cache_flags_once_even_when_the_user_gives_them(
        tmp_path: Path) -> None:
    spec = LaunchSpec(model="m", model_path=tmp_path / "m.gguf", ctx_size=512, parallel=1,
                      swa_full=True, cache_reuse=256, slot_save_path=tmp_path / "slots")
    argv = build_argv(tmp_path / "llama-server", spec, 1)
    assert "--swa-full" in argv and argv[argv.index("--cache-reuse") + 1] == "256"
    assert argv[argv.index("--slot-save-path") + 1] == str(tmp_path / "slots")
    own = build_argv(tmp_path / "llama-server", LaunchSpec(
        model="m", model_path=tmp_path / "m.gguf", ctx_size=512, parallel=1, swa_full=True,
        cache_reuse=256, extra_args=("--swa-full", "--cache-reuse", "64")), 1)
    assert own.count("--swa-full") == 1 and own.count("--cache-reuse") == 1
    assert own[own.index("--cache-reuse") + 1] == "64"
    plain = build_argv(tmp_path / "llama-server", LaunchSpec(
        model="m", model_path=tmp_path / "m.gguf", ctx_size=512, parallel=1), 1)
    assert not {"--swa-full", "--cache-reuse", "--slot-save-path"} & set(plain)


@pytest.mark.parametrize(("mode", "flags"), [
    (RunnerMode.CHAT, set()),
    (RunnerMode.EMBEDDINGS, {"--embeddings", "--pooling"}),
    (RunnerMode.RERANKING, {"--reranking"}),
])
def test_build_argv_starts_each_mode_with_its_flag(tmp_path: Path, mode: RunnerMode,
                                                   flags: set[str]) -> None:
    spec = LaunchSpec(model="m", model_path=tmp_path / "m.gguf", ctx_size=512, parallel=1,
                      mode=mode, pooling="mean")
    argv = set(build_argv(tmp_path / "llama-server", spec, 1))
    assert argv & {"--embeddings", "--pooling", "--reranking"} == flags


async def test_runner_real_llama_server_requires_its_key(real_runner: RunnerProcess) -> None:
    assert real_runner.state is RunnerState.READY
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    async with httpx.AsyncClient(base_url=real_runner.base_url, timeout=60) as client:
        anonymous = await client.post("/v1/chat/completions", json=body)
        wrong = await client.post("/v1/chat/completions", json=body,
                                  headers={"Authorization": "Bearer wrong"})
        right = await client.post("/v1/chat/completions", json=body,
                                  headers={"Authorization": f"Bearer {real_runner.api_key}"})
    assert anonymous.status_code == 401
    assert wrong.status_code == 401
    assert right.status_code == 200


async def test_runner_stop_reaps_the_child(payloads: Payloads, gemma_path: Path) -> None:
    variant = order_variants(payloads.variants(), read_cpu_flags())[0]
    runner = _runner(_spec(gemma_path), payloads.binary(variant))
    await runner.start()
    pid = runner.pid
    assert pid is not None and _alive(pid)
    await runner.stop()
    assert runner.state is RunnerState.STOPPED
    assert runner.returncode is not None
    assert not _alive(pid)


async def test_runner_early_exit_fails_fast_with_its_output(fake_runner: Path,
                                                            tmp_path: Path) -> None:
    runner = _runner(_spec(tmp_path / "m.gguf", "--fake-mode", "exit"), fake_runner)
    with pytest.raises(RunnerStartError, match="code 3") as info:
        await runner.start()
    assert "failed to load model" in str(info.value)
    assert runner.state is RunnerState.FAILED
    assert runner.load_seconds == 0.0


async def test_runner_load_timeout_kills_the_child(fake_runner: Path, tmp_path: Path) -> None:
    runner = _runner(_spec(tmp_path / "m.gguf", "--fake-mode", "hang"), fake_runner,
                     load_timeout=1.0)
    with pytest.raises(RunnerStartError, match="did not become healthy within 1s"):
        await runner.start()
    assert runner.returncode is not None, "a timed-out runner must be killed and reaped"


async def test_runner_lost_port_race_retries_on_another_port(fake_runner: Path,
                                                             tmp_path: Path) -> None:
    marker = tmp_path / "bound-once"
    runner = _runner(_spec(tmp_path / "m.gguf", "--fake-mode", "bind-fail-once",
                           "--fake-marker", str(marker)), fake_runner, load_timeout=10.0)
    await runner.start()
    try:
        assert marker.exists(), "the first launch must have failed to bind"
        assert runner.state is RunnerState.READY
    finally:
        await runner.stop()


async def test_runner_is_ready_when_its_child_says_the_model_loaded_not_at_the_next_poll(
        fake_runner: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No poll would come before the load timeout: only the child's line can make it ready.
    monkeypatch.setattr(process, "_FAST_POLLING", 0.0)
    monkeypatch.setattr(process, "_HEALTH_POLL_LATER", 60.0)
    runner = _runner(_spec(tmp_path / "m.gguf", "--fake-delay", "0.3"), fake_runner,
                     load_timeout=20.0)
    await runner.start()
    try:
        assert runner.state is RunnerState.READY
        assert runner.load_seconds < 10, "it waited out a poll instead of taking the line"
    finally:
        await runner.stop()


async def test_runner_that_never_says_the_model_loaded_is_found_by_polling(
        fake_runner: Path, tmp_path: Path) -> None:
    # Past the half second of fast polls: found by the slower ones.
    runner = _runner(_spec(tmp_path / "m.gguf", "--fake-silent", "--fake-delay", "0.8"),
                     fake_runner, load_timeout=20.0)
    await runner.start()
    try:
        assert runner.state is RunnerState.READY
        assert not any("model loaded" in line for line in runner.output)
    finally:
        await runner.stop()


async def test_runner_missing_binary_is_a_start_error(tmp_path: Path) -> None:
    runner = _runner(_spec(tmp_path / "m.gguf"), tmp_path / "no-such-binary")
    with pytest.raises(RunnerStartError, match="cannot execute"):
        await runner.start()


async def test_runner_unexpected_exit_is_reported(fake_runner: Path, tmp_path: Path) -> None:
    exits: list[RunnerProcess] = []
    runner = RunnerProcess(_spec(tmp_path / "m.gguf"), fake_runner, "test",
                           {"PATH": "/usr/bin:/bin"}, 30.0, 2.0, exits.append)
    await runner.start()
    assert runner.pid is not None
    os.kill(runner.pid, 9)
    for _ in range(100):
        if exits:
            break
        import asyncio
        await asyncio.sleep(0.02)
    assert exits == [runner]
    assert runner.state is RunnerState.FAILED
    await runner.stop()  # stopping a failed runner is a no-op that still returns
