"""The `trainyard` client commands against a running service, as a user would run them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import httpx
import pytest

from tests.support.datagen import image_folder_zip, png_bytes
from tests.support.servers import REPO, free_port
from tests.support.specs import SOFTMAX_SPEC

pytestmark = pytest.mark.e2e


def trainyard(stack, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TRAINYARD_")},
        "TRAINYARD_URL": stack.url,
        "COLUMNS": "200",
    }
    return subprocess.run(
        [sys.executable, "-m", "service.cli.main", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_submit_follow_to_success_then_inspect(embedded_stack, tmp_path):
    spec = tmp_path / "softmax.json"
    spec.write_text(json.dumps({**SOFTMAX_SPEC, "name": "cli-follow"}))
    run = trainyard(embedded_stack, "submit", str(spec), "--follow")
    assert run.returncode == 0, run.stdout + run.stderr
    assert re.search(r" 3/3 succeeded train loss \d\S*, test acc [01]\.\d{3} ", run.stdout), run.stdout
    job_id = run.stdout.split()[1]

    listing = trainyard(embedded_stack, "jobs", "list", "--status", "succeeded")
    assert listing.returncode == 0 and job_id[:8] in listing.stdout  # its short id, which commands take back
    table = trainyard(embedded_stack, "metrics", job_id)
    epochs = [int(m.group(1)) for m in re.finditer(r"^\W*(\d+)\W+\d+\.\d{4}", table.stdout, flags=re.M)]
    assert table.returncode == 0 and epochs == [1, 2, 3], table.stdout
    shown = trainyard(embedded_stack, "jobs", "show", job_id[:8], "--json")
    assert json.loads(shown.stdout)["id"] == job_id
    summary = trainyard(embedded_stack, "jobs", "show", job_id[:8]).stdout
    assert (
        f"job {job_id} cli-follow: succeeded" in summary
        and "best epoch 3 (the last epoch: no validation split" in summary
    )
    assert (
        re.search(r"^\W*3\W.*\*\W*$", table.stdout, flags=re.M)  # the best column marks epoch 3
        and not re.search(r"^\W*[12]\W.*\*\W*$", table.stdout, flags=re.M)
        and "best: epoch 3, the last epoch: no validation split to choose on" in table.stdout
    )

    assert trainyard(embedded_stack, "models", "register", "cli-model", job_id).returncode == 0
    assert trainyard(embedded_stack, "models", "alias", "cli-model", "production", "1").returncode == 0
    models = trainyard(embedded_stack, "models", "list")
    assert "cli-model" in models.stdout and "production=1" in models.stdout
    image = tmp_path / "boot.png"
    image.write_bytes(png_bytes(9, seed=5))
    predicted = trainyard(embedded_stack, "predict", "cli-model", str(image), "--top-k", "2")
    assert predicted.returncode == 0 and "ankle boot" in predicted.stdout
    unsure = trainyard(embedded_stack, "predict", "cli-model", str(image), "--top-k", "2", "--threshold", "1")
    assert unsure.returncode == 0 and "not sure" in unsure.stdout and "ankle boot" in unsure.stdout  # in the top k
    assert trainyard(embedded_stack, "predict", "cli-model", str(image), "--threshold", "1.5").returncode == 2
    registered = trainyard(embedded_stack, "models", "register", "cli-unsure", job_id, "--threshold", "0.5", "--json")
    assert registered.returncode == 0 and json.loads(registered.stdout)["threshold"] == 0.5
    shown = trainyard(embedded_stack, "models", "show", "cli-model")
    assert shown.returncode == 0 and "model cli-model: 1 version(s), latest 1" in shown.stdout, shown.stdout
    assert re.search(rf"^\W*1\W+job {job_id[:8]}\W+3\W+1x28x28\W.*\bproduction\b", shown.stdout, flags=re.M)
    raised = trainyard(embedded_stack, "models", "threshold", "cli-unsure", "1", "0.7")
    assert raised.returncode == 0 and raised.stdout.strip() == "cli-unsure version 1 (threshold 0.7)", raised.stdout
    cleared = trainyard(embedded_stack, "models", "threshold", "cli-unsure", "1")
    assert cleared.returncode == 0 and cleared.stdout.strip() == "cli-unsure version 1 (no threshold)"
    aliased = trainyard(embedded_stack, "models", "delete", "cli-model", "1")
    assert aliased.returncode == 2 and "409" in aliased.stderr and "production" in aliased.stderr, aliased.stderr
    deleted = trainyard(embedded_stack, "models", "delete", "cli-unsure", "1")
    assert deleted.returncode == 0 and deleted.stdout.strip() == "cli-unsure version 1 deleted"
    assert trainyard(embedded_stack, "models", "show", "cli-unsure").returncode == 2


def test_follow_exits_non_zero_when_the_job_fails(embedded_stack, tmp_path):
    spec = tmp_path / "missing.json"
    spec.write_text(json.dumps({**SOFTMAX_SPEC, "data": {"dataset": "mnist"}}))
    run = trainyard(embedded_stack, "submit", str(spec), "--follow")
    assert run.returncode == 1 and "failed" in run.stderr and "invalid_data" in run.stderr
    assert "warning: dataset mnist is not in this service's data folder" in " ".join(run.stderr.split())
    logs = trainyard(embedded_stack, "logs", run.stdout.split()[1])
    assert logs.returncode == 0 and "failed (invalid_data): dataset mnist" in logs.stdout, logs.stdout


def test_scripts_get_json_and_exit_codes(embedded_stack, tmp_path):
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps({**SOFTMAX_SPEC, "epochs": 1, "name": "json-ok"}))
    bad.write_text(json.dumps({**SOFTMAX_SPEC, "epochs": 1, "data": {"dataset": "mnist"}}))

    succeeded = trainyard(embedded_stack, "submit", str(good), "--follow", "--json", "--idempotency-key", "json-ok-1")
    assert succeeded.returncode == 0, succeeded.stderr
    job = json.loads(succeeded.stdout)
    assert job["status"] == "succeeded" and job["epoch"] == 1
    again = trainyard(embedded_stack, "submit", str(good), "--json", "--idempotency-key", "json-ok-1")
    assert again.returncode == 0 and json.loads(again.stdout)["id"] == job["id"]  # a rerun makes no second job
    failed = trainyard(embedded_stack, "submit", str(bad), "--follow", "--json")
    assert failed.returncode == 1 and json.loads(failed.stdout)["reason"] == "invalid_data"
    waited = trainyard(embedded_stack, "jobs", "wait", job["id"], "--json")
    assert waited.returncode == 0 and json.loads(waited.stdout)["id"] == job["id"]

    for command in (
        ["jobs", "list"],
        ["metrics", job["id"]],
        ["models", "list"],
        ["workers"],
        ["datasets", "list"],
        ["logs", job["id"]],
    ):
        run = trainyard(embedded_stack, *command, "--json")
        assert run.returncode == 0, (command, run.stderr)
        json.loads(run.stdout)  # one JSON document, nothing else on stdout
    followed = trainyard(embedded_stack, "logs", job["id"], "--follow", "--json")
    assert followed.returncode == 0 and any(
        json.loads(line)["message"].startswith("epoch 1/1") for line in followed.stdout.splitlines()
    )


def test_errors_are_one_line_with_the_exit_code_they_mean(embedded_stack, tmp_path):
    spec = tmp_path / "bad.json"
    spec.write_text(json.dumps({**SOFTMAX_SPEC, "optimizer": {"lr": -1}}))
    run = trainyard(embedded_stack, "submit", str(spec))
    assert run.returncode == 2 and run.stderr.startswith("error: 422 ") and "optimizer.lr" in run.stderr
    missing = trainyard(embedded_stack, "jobs", "cancel", "00000000-0000-0000-0000-000000000000")
    assert missing.returncode == 2 and missing.stderr.startswith("error: 404 ")
    assert trainyard(embedded_stack, "jobs", "list", "--no-such-option").returncode == 2

    port = free_port()
    unreachable = subprocess.run(
        [sys.executable, "-m", "service.cli.main", "jobs", "list", "--url", f"http://127.0.0.1:{port}"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert unreachable.returncode == 3 and unreachable.stdout == ""
    assert unreachable.stderr.startswith(f"error: cannot reach the service at http://127.0.0.1:{port} (")
    assert "Start it with `make run`" in unreachable.stderr and "TRAINYARD_URL" in unreachable.stderr
    assert len(unreachable.stderr.strip().splitlines()) == 1 and "Traceback" not in unreachable.stderr

    version = trainyard(embedded_stack, "--version")
    assert version.returncode == 0 and re.fullmatch(r"trainyard \d+\.\d+\.\d+\n", version.stdout)


def test_datasets_upload_and_list(embedded_stack, tmp_path):
    archive = tmp_path / "pets.zip"
    archive.write_bytes(image_folder_zip(["cat", "dog"], per_class=5, test_per_class=2))
    run = trainyard(embedded_stack, "datasets", "upload", str(archive), "--name", "pets")
    assert run.returncode == 0 and run.stdout.startswith("uploaded:pets  (id ") and "classes cat, dog" in run.stdout
    assert "1x28x28 grayscale" in run.stdout
    assert "pets" in trainyard(embedded_stack, "datasets", "list").stdout
    shown = trainyard(embedded_stack, "datasets", "show", "pets")
    assert shown.returncode == 0 and shown.stdout.splitlines()[0] == run.stdout.splitlines()[0], shown.stdout
    taken = trainyard(embedded_stack, "datasets", "upload", str(archive), "--name", "pets", "--color", "rgb")
    assert taken.returncode == 2 and "409 a dataset named 'pets' exists" in taken.stderr, taken.stderr
    rgb = trainyard(embedded_stack, "datasets", "upload", str(archive), "--color", "rgb", "--name", "pets-rgb")
    assert rgb.returncode == 0 and "3x28x28 rgb" in rgb.stdout, rgb.stdout
    assert rgb.stdout.split()[0] == "uploaded:pets-rgb"
    deleted = trainyard(embedded_stack, "datasets", "delete", "pets-rgb", "--json")  # by name, as specs say it
    assert deleted.returncode == 0, deleted.stderr
    answer = json.loads(deleted.stdout)
    assert answer["deleted"] is True and answer["name"] == "pets-rgb" and len(answer["id"]) == 36
    assert "pets-rgb" not in trainyard(embedded_stack, "datasets", "list").stdout
    pets_id = run.stdout.split()[2].removesuffix(")")
    by_prefix = trainyard(embedded_stack, "datasets", "delete", pets_id)
    assert by_prefix.returncode == 0 and by_prefix.stdout.startswith(f"dataset pets ({pets_id}) deleted")
    assert "pets" not in trainyard(embedded_stack, "datasets", "list").stdout
    few = trainyard(embedded_stack, "datasets", "upload", str(archive), "--min-per-class", "6", "--name", "few")
    assert few.returncode != 0 and "fewer than --min-per-class=6 training images: cat (5), dog (5)" in few.stderr


def test_event_stream_reports_status_and_every_epoch(embedded_stack):
    with httpx.Client(base_url=embedded_stack.url, timeout=60) as client:
        job_id = client.post("/v1/jobs", json={**SOFTMAX_SPEC, "epochs": 2}).json()["id"]
        events = []
        with client.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            kind = None
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    kind = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    events.append((kind, json.loads(line.removeprefix("data: "))))
    kinds = [k for k, _ in events]
    assert kinds[-1] == "end" and events[-1][1]["status"] == "succeeded"
    assert [d["epoch"] for k, d in events if k == "epoch"] == [1, 2]
    assert [d["to_status"] for k, d in events if k == "status"] == ["queued", "running", "succeeded"]
    with httpx.Client(base_url=embedded_stack.url) as client:
        assert client.get("/v1/jobs/nope/events").status_code == 404


def test_sweep_follow_prints_the_ranked_sweep(embedded_stack, tmp_path):
    request = tmp_path / "sweep.json"
    request.write_text(
        json.dumps({"name": "cli-sweep", "base": {**SOFTMAX_SPEC, "epochs": 1}, "grid": {"optimizer.lr": [0.05, 0.5]}})
    )
    run = trainyard(embedded_stack, "sweep", str(request), "--follow", "--json")
    assert run.returncode == 0, run.stderr
    sweep = json.loads(run.stdout)
    assert sweep["status"] == "succeeded" and len(sweep["jobs"]) == 2
    table = trainyard(embedded_stack, "sweep", str(request), "--follow")
    assert table.returncode == 0 and "optimizer.lr" in table.stdout and "succeeded" in table.stdout
    assert table.stdout.endswith("\n")  # piped, the live table's last line ends
    trials = [job["job_id"] for job in sweep["jobs"]]
    both = trainyard(embedded_stack, "plot", *(f"job:{t[:8]}" for t in trials), "-o", str(tmp_path / "both.png"))
    assert both.returncode == 0 and "both.png" in both.stdout, both.stderr
    one = trainyard(embedded_stack, "plot", trials[0], "-o", str(tmp_path / "one.png"))
    assert one.returncode == 0, one.stderr
    for picture in ("both.png", "one.png"):
        assert (tmp_path / picture).read_bytes().startswith(b"\x89PNG")
    nowhere = trainyard(embedded_stack, "plot", trials[0], "-o", str(tmp_path / "missing" / "one.png"))
    assert nowhere.returncode == 2 and "cannot write" in nowhere.stderr and "Traceback" not in nowhere.stderr
    unknown = trainyard(embedded_stack, "plot", trials[0], "0123456789ab", "-o", str(tmp_path / "none.png"))
    assert unknown.returncode == 2 and "0123456789ab" in unknown.stderr and not (tmp_path / "none.png").exists()


def test_predict_takes_numeric_rows_for_a_regression(embedded_stack, tmp_path):
    spec = tmp_path / "linear.json"
    body = {
        "model": {"arch": "linear_regression"},
        "data": {"dataset": "synthetic-linear", "true_w": [2, -3.4], "true_b": 4.2, "num_examples": 512},
        "optimizer": {"lr": 0.03},
        "epochs": 3,
        "batch_size": 16,
    }
    spec.write_text(json.dumps(body))
    job = trainyard(embedded_stack, "submit", str(spec), "--follow")
    assert job.returncode == 0, job.stdout + job.stderr
    job_id = job.stdout.split()[1]
    rows = trainyard(embedded_stack, "predict", f"job:{job_id}", "--row", "1,1", "--row", "0,0", "--json")
    assert rows.returncode == 0, rows.stderr
    values = [p["value"] for p in json.loads(rows.stdout)["predictions"]]
    assert values == pytest.approx([2 - 3.4 + 4.2, 4.2], abs=0.3)  # y = 2 x1 - 3.4 x2 + 4.2
    table = trainyard(embedded_stack, "predict", f"job:{job_id}", "--row", "1,1")
    assert table.returncode == 0 and "value" in table.stdout, table.stdout
    images = trainyard(embedded_stack, "predict", f"job:{job_id}", str(spec))
    assert images.returncode != 0 and "--row" in images.stderr, images.stderr

    learned = trainyard(embedded_stack, "models", "params", f"job:{job_id}", "--json")
    assert learned.returncode == 0, learned.stderr
    error = json.loads(learned.stdout)["estimation_error"]
    assert error["true_w"] == [2, -3.4] and error["true_b"] == 4.2
    assert max(map(abs, error["w_error"])) < 0.3 and abs(error["b_error"]) < 0.3, error
    said = trainyard(embedded_stack, "models", "params", f"job:{job_id}")
    assert said.returncode == 0 and "1.weight" in said.stdout, said.stdout
    assert "error in estimating w (true - learned): [" in said.stdout, said.stdout
    with embedded_stack.client() as page:
        section = page.get(f"/ui/fragments/jobs/{job_id}/parameters").text
    assert 'id="estimation-error"' in section and "w = [2, -3.4]" in section, section
