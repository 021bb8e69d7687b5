"""The README's curl walkthrough and its command-line blocks work as written, against a running stack."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.datagen import class_png, image_folder_zip
from tests.servers import REPO, Stack, require

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


def shell_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


def first_command(block: str) -> str:
    return next(line.strip() for line in block.splitlines() if line.strip())


# The README's shell blocks that use the CLI, by their first line: those run here, in this order
# (later blocks use $JOB and the model `fashion` of the first), and those not run, with why.
CLI_BLOCKS_RUN = [
    ".venv/bin/trainyard submit examples/softmax-regression.json --follow   # live progress bar; exits 1 unless it succeeds",
    "curl -s http://127.0.0.1:8000/v1/jobs/$JOB/evaluation?limit=1",
    'curl -OJ "http://127.0.0.1:8000/v1/models/fashion/versions/1/export?format=safetensors"',
]
CLI_BLOCKS_NOT_RUN = {
    ".venv/bin/trainyard sweep examples/sweeps/weight-decay.json --follow        # weight decay 0 against 3":
        "six sweeps are minutes of training: tests/test_examples.py checks every request, and "
        "tests/service/cli/test_client.py runs `sweep --follow`",
    "curl -s http://127.0.0.1:8000/v1/datasets -F file=@flowers.zip -F name=flowers -F image_size=64":
        "it has a placeholder to fill in (ID=...) and the reader's own photos",
    "curl -F file=@lenet.safetensors -F name=brought -F 'model={\"arch\": \"lenet\"}' \\":
        "it needs weights trained elsewhere (tests/test_model_exchange.py imports such weights)",
    "export TRAINYARD_DATABASE_URL=postgresql+psycopg://trainyard@db.internal/trainyard":
        "production servers",
}


def test_every_cli_block_is_run_or_says_why_not():
    blocks = [b for b in shell_blocks() if "trainyard " in b]
    assert sorted(map(first_command, blocks)) == sorted([*CLI_BLOCKS_RUN, *CLI_BLOCKS_NOT_RUN])
    # `make run` puts no `trainyard` on PATH: every block calls .venv/bin/trainyard.
    assert not [b for b in shell_blocks() if re.search(r"(^|[|;(]|\$\()\s*trainyard\s", b, flags=re.M)]


def first_json(text: str):
    """The first JSON object in some output (curl ends it without a newline)."""
    return json.JSONDecoder().raw_decode(text[text.index("{"):])[0]


@pytest.fixture(scope="module")
def fresh_stack(tmp_path_factory, data_dir):
    """A service of its own: the README's commands name models (`fashion`, version 1) as a new
    user's service would have them, which the suite's shared service cannot promise."""
    with Stack(home=tmp_path_factory.mktemp("readme"), data_dir=data_dir) as stack:
        yield stack


def test_readme_cli_blocks(fresh_stack, tmp_path):
    """What a newcomer types in a second terminal after `make run` (which started the service on
    TRAINYARD_PORT): the CLI blocks, as written, from the repository's folder."""
    venv = Path(sys.prefix)
    require((venv / "bin" / "trainyard").exists(), f"the trainyard command is not installed in {venv}")
    (tmp_path / ".venv").symlink_to(venv)
    (tmp_path / "examples").symlink_to(REPO / "examples")
    class_png(tmp_path / "shirt.png", 6)
    class_png(tmp_path / "boot.png", 9)
    (tmp_path / "shapes.zip").write_bytes(image_folder_zip(["circle", "square"], per_class=6, test_per_class=2))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINYARD_")}
    env.update(TRAINYARD_PORT=str(urlsplit(fresh_stack.url).port), COLUMNS="80")
    by_first = {first_command(b): b for b in shell_blocks()}
    script = "".join(f"echo '--- block {i}'\n{by_first[first]}" for i, first in enumerate(CLI_BLOCKS_RUN))
    result = subprocess.run(["bash", "-euxo", "pipefail", "-c", script.replace("http://127.0.0.1:8000", fresh_stack.url)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    tour, evaluation, exports = result.stdout.split("--- block ")[1:]

    job_id = re.match(r"0\njob (\S+) queued", tour).group(1)
    assert re.search(r" 10/10 succeeded train loss \d\S*, test acc [01]\.\d{3} ", tour), tour
    assert f"job {job_id} " in tour.split(f"job {job_id} succeeded\n", 1)[1]  # $JOB is the job just submitted
    assert "best epoch 10 (chosen on last_epoch" in tour
    assert "precision" in tour and "fashion@production -> version 1" in tour
    assert "boot.png" in tour and "shirt.png" in tour and "uploaded:" in tour and "square" in tour
    assert first_json(evaluation)["model"]["reference"] == f"job:{job_id}"
    assert "most confident mistakes" in evaluation
    assert {"fashion.onnx"} <= {p.name for p in tmp_path.iterdir()} and len(list(tmp_path.glob("*.onnx"))) >= 2
