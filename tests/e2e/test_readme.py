"""The README's quickstart and the shell blocks of the docs pages work as written, against running
services, and the links between the pages lead somewhere.

The quickstart (the README's, and docs/walkthrough.md's with curl) runs on a service of its own whose
data folder is empty, as a newcomer's machine without datasets or internet has it. The Fashion-MNIST
walkthrough, the CLI tour, evaluation and exports run on services that have (stand-in) Fashion-MNIST
files in their data folder."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from service.cli.sample_data import shapes_zip
from tests.support.datagen import class_png
from tests.support.servers import REPO, Stack, require

README = REPO / "README.md"
DOCS = REPO / "docs"
QUICKSTART = (README, "## Quickstart")
CURL_QUICKSTART = (DOCS / "walkthrough.md", "## The quickstart with curl")
FASHION_WALKTHROUGH = (DOCS / "walkthrough.md", "## Walkthrough on Fashion-MNIST")


def pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def outside_fences(text: str):
    """(line, True) for each line outside fenced code blocks, (line, False) inside (fences included)."""
    fenced = False
    for line in text.split("\n"):
        if line.startswith("```"):
            fenced = not fenced
            yield line, False
        else:
            yield line, not fenced


def section(path: Path, heading: str) -> str:
    """The text under a heading, up to the next heading of the same or a higher level."""
    level = len(heading) - len(heading.lstrip("#"))
    lines, inside = [], False
    for line, prose in outside_fences(path.read_text()):
        if prose and line == heading:
            inside = True
            continue
        if inside and prose and re.match(rf"#{{1,{level}}} ", line):
            break
        if inside:
            lines.append(line)
    assert inside, f"{path.name} has no heading {heading!r}"
    return "\n".join(lines)


def sh_blocks(text: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", text, flags=re.S)


def shell_blocks() -> list[str]:
    return [block for page in pages() for block in sh_blocks(page.read_text())]


def first_command(block: str) -> str:
    return next(line.strip() for line in block.splitlines() if line.strip())


def first_json(text: str):
    """The first JSON object in some output (curl ends it without a newline)."""
    return json.JSONDecoder().raw_decode(text[text.index("{") :])[0]


def newcomer(folder: Path, stack: Stack) -> dict:
    """A repository's folder as a newcomer has it after `make run` (its .venv and examples/), and the
    environment of a second terminal: the CLI finds the service on TRAINYARD_PORT, as `make run` set
    it. Returns that environment."""
    venv = Path(sys.prefix)
    require((venv / "bin" / "trainyard").exists(), f"the trainyard command is not installed in {venv}")
    (folder / ".venv").symlink_to(venv)
    (folder / "examples").symlink_to(REPO / "examples")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINYARD_")}
    # The CLI of this tree: an editable install of the virtual environment may point at another checkout.
    env.update(TRAINYARD_PORT=str(urlsplit(stack.url).port), COLUMNS="80", PYTHONPATH=str(REPO))
    return env


def run_blocks(blocks: list[str], stack: Stack, cwd: Path, env: dict, *, timeout: float) -> list[str]:
    """Run the blocks, as written but for the service's address, in one shell; each one's output."""
    script = "".join(f"echo '--- block {i}'\n{block}" for i, block in enumerate(blocks))
    result = subprocess.run(
        ["bash", "-euxo", "pipefail", "-c", script.replace("http://127.0.0.1:8000", stack.url)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout.split("--- block ")[1:]


def predicted(table: str) -> dict[str, str]:
    """file -> label, from the CLI's predictions table."""
    return dict(re.findall(r"│ (\S+\.png) +│ (\S+) +│", table))


@pytest.fixture(scope="module")
def newcomer_stack(tmp_path_factory):
    """A service of its own, as `make run` starts it on a newcomer's machine: nothing in its data
    folder and no downloads allowed."""
    with Stack(
        home=tmp_path_factory.mktemp("quickstart"),
        data_dir=tmp_path_factory.mktemp("no-data"),
        extra_env={"TRAINYARD_ALLOW_DOWNLOAD": "false"},
    ) as stack:
        yield stack


@pytest.mark.e2e
def test_readme_quickstart(newcomer_stack, tmp_path):
    """The README's quickstart, as written, from a second terminal: well within its five minutes."""
    env = newcomer(tmp_path, newcomer_stack)
    train, further = run_blocks(sh_blocks(section(*QUICKSTART)), newcomer_stack, tmp_path, env, timeout=240)

    assert "shapes.zip: 500 images of circle, square, triangle, cross" in train
    upload = r"uploaded:shapes\s+\(id [0-9a-f]{8}\)\s+image_folder,\s+classification,\s+1x28x28\s+grayscale,\s+400 train / 100 test"
    assert re.search(upload, train), train
    job_id = re.search(r"job (\S+) queued", train).group(1)
    assert f"job {job_id} succeeded" in train
    assert predicted(train) == {"circle.png": "circle", "triangle.png": "triangle"}, train
    assert "precision" in further and "shapes version 1 " in further
    assert predicted(further) == {"square.png": "square", "cross.png": "cross"}, further


@pytest.mark.e2e
def test_docs_quickstart_with_curl(newcomer_stack, tmp_path):
    env = newcomer(tmp_path, newcomer_stack)
    upload, train, predict = run_blocks(
        sh_blocks(section(*CURL_QUICKSTART)), newcomer_stack, tmp_path, env, timeout=240
    )
    dataset = first_json(upload)
    assert (dataset["name"], dataset["status"], dataset["num_train"]) == ("shapes", "ready", 400)
    assert "event: epoch" in train and "event: end" in train, train[-500:]
    answer = first_json(predict)
    assert [p["label"] for p in answer["predictions"]] == ["circle", "triangle"]
    assert all(len(p["top_k"]) == 2 for p in answer["predictions"])


def run_block(block: str, url: str, cwd, env: dict) -> str:
    script = block.replace("http://127.0.0.1:8000", url)
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"{script}\n{result.stderr}"
    return result.stdout


@pytest.mark.e2e
def test_docs_walkthrough_on_fashion_mnist(embedded_stack, tmp_path):
    submit, poll, metrics, predict = sh_blocks(section(*FASHION_WALKTHROUGH))
    env = dict(os.environ)
    job_id = run_block(submit, embedded_stack.url, tmp_path, env).strip().splitlines()[-1]
    env["JOB"] = job_id
    with embedded_stack.client() as client:
        embedded_stack.wait_for_job(client, job_id)
    assert json.loads(run_block(poll, embedded_stack.url, tmp_path, env))["status"] == "succeeded"
    assert [e["epoch"] for e in json.loads(run_block(metrics, embedded_stack.url, tmp_path, env))["epochs"]] == [
        1,
        2,
        3,
    ]
    class_png(tmp_path / "shirt.png", 6)
    class_png(tmp_path / "boot.png", 9)
    answer = json.loads(run_block(predict, embedded_stack.url, tmp_path, env))
    assert [p["label"] for p in answer["predictions"]] == ["shirt", "ankle boot"]
    assert all(len(p["top_k"]) == 3 for p in answer["predictions"])


# The shell blocks of the README and docs/ that use the CLI, by their first line, beyond the
# quickstarts (run above): those run here, in this order (later blocks use $JOB and the model
# `fashion` of the first), and those not run, with why.
CLI_BLOCKS_RUN = [
    ".venv/bin/trainyard submit examples/softmax-regression.json --follow   # live progress bar; exits 1 unless it succeeds",
    "curl -s http://127.0.0.1:8000/v1/jobs/$JOB/evaluation?limit=1",
    'curl -fOJ "http://127.0.0.1:8000/v1/models/fashion/versions/1/export?format=safetensors"',
]
CLI_BLOCKS_NOT_RUN = {
    ".venv/bin/trainyard sweep examples/sweeps/weight-decay.json --follow        # weight decay 0 against 3": "six sweeps are minutes of training: tests/test_examples.py checks every request, and "
    "tests/e2e/test_cli_commands.py runs `sweep --follow`",
    ".venv/bin/trainyard sweep examples/sweeps/learning-rate-tpe.json --follow  # 16 TPE draws of learning rate and batch size, ASHA": "adaptive sweeps are minutes of training: tests/test_examples.py checks both requests, and "
    "tests/e2e/test_adaptive_sweeps.py runs TPE and the pruners through the service",
    "curl -s http://127.0.0.1:8000/v1/datasets -F file=@flowers.zip -F name=flowers -F image_size=64": "it has a placeholder to fill in (ID=...) and the reader's own photos",
    'curl -F file=@lenet.safetensors -F name=brought -F \'model={"arch": "lenet"}\' \\': "it needs weights trained elsewhere (tests/e2e/test_model_exchange.py imports such weights)",
    "export TRAINYARD_DATABASE_URL=postgresql+psycopg://trainyard@db.internal/trainyard": "production servers",
    "export TRAINYARD_HOST=0.0.0.0 TRAINYARD_API_TOKENS=...": "machines sharing PostgreSQL, Redis and an S3 store "
    "(tests/e2e/test_worker_processes.py runs workers of separate homes on a shared database, broker and folder)",
    ".venv/bin/trainyard worker   # or --gpus all: one worker per GPU": "the worker of the same machines",
    ".venv/bin/trainyard storage migrate --to s3://trainyard-files/prod   # run with the AWS_* variables set": "it needs "
    "an S3 store: tests/service/core/test_storage_migrate.py migrates a home into a real one (SeaweedFS) and reads it "
    "back, tests/service/cli/test_storage_commands.py runs both commands",
}


def test_every_cli_block_is_run_or_says_why_not():
    quickstarts = [*sh_blocks(section(*QUICKSTART)), *sh_blocks(section(*CURL_QUICKSTART))]
    blocks = [b for b in shell_blocks() if "trainyard " in b and b not in quickstarts]
    assert sorted(map(first_command, blocks)) == sorted([*CLI_BLOCKS_RUN, *CLI_BLOCKS_NOT_RUN])
    # `make run` puts no `trainyard` on PATH: every block calls .venv/bin/trainyard.
    assert not [b for b in shell_blocks() if re.search(r"(^|[|;(]|\$\()\s*trainyard\s", b, flags=re.M)]


@pytest.fixture(scope="module")
def fresh_stack(tmp_path_factory, data_dir):
    """A service of its own: the docs' commands name models (`fashion`, version 1) as a new
    user's service would have them, which the suite's shared service cannot promise."""
    with Stack(home=tmp_path_factory.mktemp("readme"), data_dir=data_dir) as stack:
        yield stack


@pytest.mark.e2e
def test_docs_cli_blocks(fresh_stack, tmp_path):
    """What a newcomer types in a second terminal after `make run` (which started the service on
    TRAINYARD_PORT): the CLI blocks of the docs, as written, from the repository's folder."""
    env = newcomer(tmp_path, fresh_stack)
    class_png(tmp_path / "shirt.png", 6)
    class_png(tmp_path / "boot.png", 9)
    (tmp_path / "shapes.zip").write_bytes(shapes_zip())  # the quickstart's
    by_first = {first_command(b): b for b in shell_blocks()}
    tour, evaluation, exports = run_blocks(
        [by_first[first] for first in CLI_BLOCKS_RUN], fresh_stack, tmp_path, env, timeout=240
    )

    job_id = re.match(r"0\njob (\S+) queued", tour).group(1)
    assert re.search(r" 10/10 succeeded train loss \d\S*, test acc [01]\.\d{3} ", tour), tour
    assert f"job {job_id} " in tour.split(f"job {job_id} succeeded\n", 1)[1]  # $JOB is the job just submitted
    assert "best epoch 10 (the last epoch: no validation split to choose on" in tour
    assert "precision" in tour and "fashion@production -> version 1" in tour
    assert "model fashion: 1 version(s), latest 1" in tour and "fashion version 1 (threshold 0.6)" in tour
    assert "boot.png" in tour and "shirt.png" in tour and "uploaded:" in tour and "square" in tour
    assert first_json(evaluation)["model"]["reference"] == f"job:{job_id}"
    mistakes = first_json(evaluation)["mistakes"]  # the table says the same as the JSON
    assert ("most confident mistakes" in evaluation) == bool(mistakes)
    assert ("no mistakes: every test example is right" in evaluation) == (not mistakes)
    assert {"fashion.onnx"} <= {p.name for p in tmp_path.iterdir()} and len(list(tmp_path.glob("*.onnx"))) >= 2


# Links between the pages.


def anchors(page: Path) -> set[str]:
    """The fragments that lead into a page: its headings, as GitHub makes them into ids, and its
    explicit <a id="..."> anchors."""
    found, seen = set(), {}
    for line, prose in outside_fences(page.read_text()):
        if prose and re.match(r"#{1,6} ", line):
            slug = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            found.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
        if prose:
            found.update(re.findall(r'<a id="([^"]+)"></a>', line))
    return found


def test_relative_links_lead_to_files_and_headings_that_exist():
    broken = []
    for page in pages():
        for line, prose in outside_fences(page.read_text()):
            for target in re.findall(r"\]\(([^)\s]+)\)", line) if prose else ():
                if re.match(r"[a-z]+:", target):
                    continue
                path, _, fragment = target.partition("#")
                linked = (page.parent / path).resolve() if path else page
                if not linked.exists():
                    broken.append(f"{page.relative_to(REPO)}: {target} (no such file)")
                elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
                    broken.append(f"{page.relative_to(REPO)}: {target} (no such heading)")
    assert broken == []
