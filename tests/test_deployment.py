"""The container image and the compose stack: safe by default, as the README promises."""

from __future__ import annotations

import re

import yaml

from tests.support.servers import REPO


def test_compose_exposes_nothing_without_credentials():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert services["api"]["environment"]["TRAINYARD_HOST"] == "0.0.0.0"
    tokens = compose["x-trainyard-env"]["TRAINYARD_API_TOKENS"]
    assert tokens.startswith("${TRAINYARD_API_TOKENS:?"), "compose must fail without tokens, not start open"
    assert services["flower"]["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")
    assert services["worker-gpu"]["profiles"] == ["gpu"]
    example = dict(
        line.split("=", 1)
        for line in (REPO / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert {"TRAINYARD_API_TOKENS", "FLOWER_BASIC_AUTH"} <= set(example)


def test_the_image_installs_dependencies_first_runs_unprivileged_and_checks_health():
    dockerfile = (REPO / "Dockerfile").read_text()
    lines = [line for line in dockerfile.splitlines() if line and not line.startswith("#")]
    first_source = next(i for i, line in enumerate(lines) if line.startswith("COPY service"))
    dependencies = next(i for i, line in enumerate(lines) if "pip install" in line and "requirements" in line)
    assert dependencies < first_source, "dependencies must be installed in a layer before the source is copied"
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*\\$\n\s+CMD .*/healthz", dockerfile, re.MULTILINE)


def test_every_long_running_service_restarts_and_one_image_is_built_once():
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    assert all(service.get("restart") in ("unless-stopped", "always", "on-failure") for service in services.values())
    cpu_image = services["api"]["image"]
    assert "build" in services["api"]
    for name in ("worker-cpu", "flower"):
        assert services[name]["image"] == cpu_image and services[name]["pull_policy"] == "never"
        assert "build" not in services[name]
    assert services["api"]["build"]["args"]["TORCH_INDEX_URL"].startswith("${TORCH_INDEX_URL-https://")
    assert services["worker-gpu"]["build"]["args"]["TORCH_INDEX_URL"] == "", "the GPU image takes PyPI's CUDA torch"
    assert services["postgres"]["image"] == "${POSTGRES_IMAGE:-postgres:16}"
    assert services["redis"]["image"] == "${REDIS_IMAGE:-redis:7}"
    assert services["flower"]["command"][:3] == ["python", "-m", "workers.flower"]


def test_secrets_stay_out_of_git_and_the_build_context():
    example = dict(
        line.split("=", 1)
        for line in (REPO / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert all(value == "" for value in example.values()), "empty, so that compose's :? checks stop `up`"
    assert ".env" in (REPO / ".gitignore").read_text().splitlines()
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    assert {".env", ".git", ".venv", "data", "var"} <= set(ignored)
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3.11-slim\nFROM \$\{BASE_IMAGE\}", dockerfile, re.MULTILINE)
    assert "ARG TORCH_INDEX_URL=" in dockerfile and "--mount=type=secret,id=ca_bundle" in dockerfile
