"""The README's curl walkthrough works as written, against a running stack."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from tests.datagen import class_png
from tests.servers import REPO

pytestmark = pytest.mark.e2e


def walkthrough_blocks() -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Walkthrough with curl", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, flags=re.S)


def run_block(block: str, url: str, cwd, env: dict) -> str:
    script = block.replace("http://127.0.0.1:8000", url)
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{script}\n{result.stderr}"
    return result.stdout


def test_readme_walkthrough(embedded_stack, tmp_path):
    submit, poll, metrics, predict = walkthrough_blocks()
    env = dict(os.environ)
    job_id = run_block(submit, embedded_stack.url, tmp_path, env).strip().splitlines()[-1]
    env["JOB"] = job_id
    with embedded_stack.client() as client:
        embedded_stack.wait_for_job(client, job_id)
    assert json.loads(run_block(poll, embedded_stack.url, tmp_path, env))["status"] == "succeeded"
    assert [e["epoch"] for e in json.loads(run_block(metrics, embedded_stack.url, tmp_path, env))["epochs"]] == [1, 2, 3]
    class_png(tmp_path / "shirt.png", 6)
    class_png(tmp_path / "boot.png", 9)
    answer = json.loads(run_block(predict, embedded_stack.url, tmp_path, env))
    assert [p["label"] for p in answer["predictions"]] == ["shirt", "ankle boot"]
    assert all(len(p["top_k"]) == 3 for p in answer["predictions"])
