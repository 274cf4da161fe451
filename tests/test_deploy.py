"""The container set-up, checked without a Docker daemon: compose.yaml against the Compose
specification's JSON schema, and the Dockerfile's stages, user, healthcheck and volume."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).parent.parent


def compose_schema() -> dict[str, Any]:
    # The specification's own schema, as check-jsonschema vendors it (pinned in the dev
    # extras; `check-jsonschema --builtin-schema vendor.compose-spec` uses the same file).
    text = (resources.files("check_jsonschema") / "builtin_schemas" / "vendor" /
            "compose-spec.json").read_text()
    loaded: dict[str, Any] = json.loads(text)
    return loaded


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return loaded


def test_compose_file_is_valid_against_the_compose_specification(
    compose: dict[str, Any]
) -> None:
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert errors == []


def test_compose_serves_on_8080_with_a_data_volume_and_read_only_configs(
    compose: dict[str, Any]
) -> None:
    service = compose["services"]["switchboard"]
    assert "profiles" not in service  # `docker compose up` starts it with no flags
    assert service["build"]["context"] == "."
    assert service["ports"] == ["127.0.0.1:8080:8080"]
    assert "data:/data" in service["volumes"] and "./configs:/app/configs:ro" in service["volumes"]
    assert "data" in compose["volumes"]
    assert any("/health" in part for part in service["healthcheck"]["test"])
    assert service["restart"] == "unless-stopped"


def test_the_nvidia_profile_reserves_gpus_and_builds_the_cuda_variant(
    compose: dict[str, Any]
) -> None:
    gpu = compose["services"]["switchboard-nvidia"]
    assert gpu["profiles"] == ["nvidia"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    args = gpu["build"]["args"]
    assert "cuda" in args["VARIANTS"].split() and "nvidia/cuda" in args["RUNTIME_BASE"]
    assert gpu["ports"] != compose["services"]["switchboard"]["ports"]  # both may run


def _stages() -> list[list[dict[str, Any]]]:
    """The Dockerfile's instructions, split per FROM."""
    stages: list[list[dict[str, Any]]] = []
    for item in DockerfileParser(str(ROOT / "Dockerfile")).structure:
        if item["instruction"] == "FROM":
            stages.append([])
        if stages and item["instruction"] != "COMMENT":
            stages[-1].append(item)
    return stages


def _values(stage: list[dict[str, Any]], instruction: str) -> list[str]:
    return [str(item["value"]) for item in stage if item["instruction"] == instruction]


def test_dockerfile_builds_in_one_stage_and_runs_slim_in_another() -> None:
    build, runtime = _stages()
    assert _values(build, "FROM") == ["${BUILD_BASE} AS build"]
    assert _values(runtime, "FROM") == ["${RUNTIME_BASE} AS runtime"]
    build_steps = " ".join(_values(build, "RUN"))
    assert "python -m runner.build ${VARIANTS}" in build_steps and "g++" in build_steps
    runtime_steps = " ".join(_values(runtime, "RUN"))
    for tool in ("g++", "cmake", "ninja", "make "):
        assert tool not in runtime_steps, f"the runtime stage installs {tool}"
    assert any(v.startswith("--from=build /dist/") for v in _values(runtime, "COPY"))


def test_dockerfile_runtime_is_unprivileged_healthchecked_and_keeps_data_in_a_volume() -> None:
    runtime = _stages()[-1]
    (user,) = _values(runtime, "USER")
    assert user not in ("root", "0")
    (healthcheck,) = _values(runtime, "HEALTHCHECK")
    assert "http://127.0.0.1:8080/health" in healthcheck
    assert _values(runtime, "VOLUME") == ["/data"]
    env = " ".join(_values(runtime, "ENV"))
    assert "SWITCHBOARD_HOME=/data" in env and "SWITCHBOARD_HOST=0.0.0.0" in env
    assert _values(runtime, "CMD") == ['["switchboard", "serve", "--insecure"]']


def test_dockerfile_cuda_is_a_build_argument() -> None:
    args = [item["value"] for item in DockerfileParser(str(ROOT / "Dockerfile")).structure
            if item["instruction"] == "ARG"]
    assert any(a.startswith("BUILD_BASE=") for a in args)
    assert any(a.startswith("RUNTIME_BASE=") for a in args)
    assert any(a.startswith("VARIANTS=") for a in args)


def test_host_build_outputs_stay_out_of_the_image() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for path in ("runner/payloads", ".venv", "*.gguf", "dist", "build"):
        assert path in ignored


def test_the_cluster_profile_is_nats_with_jetstream_and_two_nodes_that_join_it(
    compose: dict[str, Any]
) -> None:
    services = compose["services"]
    assert services["nats"]["profiles"] == ["cluster"] and "-js" in services["nats"]["command"]
    nodes = [services["node-a"], services["node-b"]]
    for name, node in zip(("node-a", "node-b"), nodes, strict=True):
        env = node["environment"]
        assert node["profiles"] == ["cluster"] and node["depends_on"] == ["nats"]
        assert env["SWITCHBOARD_CLUSTER"] == "nats://nats:4222"
        assert env["SWITCHBOARD_NODE_NAME"] == name
        assert env["SWITCHBOARD_ADVERTISE_URL"] == f"http://{name}:8080"
        assert env["SWITCHBOARD_CLUSTER_KEY"].startswith("${SWITCHBOARD_CLUSTER_KEY:?")
    assert nodes[0]["volumes"][0] != nodes[1]["volumes"][0]  # a store each
    assert nodes[0]["ports"] != nodes[1]["ports"]
