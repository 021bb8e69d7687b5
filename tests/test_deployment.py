"""The container image and the compose stack: safe by default, as the README promises."""

from __future__ import annotations

import re

import yaml

from tests.servers import REPO


def test_compose_exposes_nothing_without_credentials():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert services["api"]["environment"]["TRAINYARD_HOST"] == "0.0.0.0"
    tokens = compose["x-trainyard-env"]["TRAINYARD_API_TOKENS"]
    assert tokens.startswith("${TRAINYARD_API_TOKENS:?"), "compose must fail without tokens, not start open"
    assert services["flower"]["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")
    assert services["worker-gpu"]["profiles"] == ["gpu"]
    example = dict(line.split("=", 1) for line in (REPO / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
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
