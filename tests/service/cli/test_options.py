"""The CLI in this process: where it dials, how it reports a refusal, its help and its progress line."""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys

import httpx
import pytest
from rich.console import Console
from rich.progress import Progress
from typer.testing import CliRunner

from service.cli import client as cli_client
from service.cli import main as cli_main


@pytest.mark.parametrize(
    "env, url",
    [
        ({}, "http://127.0.0.1:8000"),
        ({"TRAINYARD_PORT": "8123"}, "http://127.0.0.1:8123"),
        ({"TRAINYARD_HOST": "10.1.2.3", "TRAINYARD_PORT": "9000"}, "http://10.1.2.3:9000"),
        ({"TRAINYARD_HOST": "0.0.0.0", "TRAINYARD_PORT": "8001"}, "http://127.0.0.1:8001"),
        ({"TRAINYARD_HOST": "::"}, "http://127.0.0.1:8000"),
        ({"TRAINYARD_HOST": "::1", "TRAINYARD_PORT": "8002"}, "http://[::1]:8002"),
        ({"TRAINYARD_HOST": "", "TRAINYARD_PORT": ""}, "http://127.0.0.1:8000"),
        ({"TRAINYARD_URL": "https://trainyard.example:443", "TRAINYARD_PORT": "8123"}, "https://trainyard.example:443"),
    ],
)
def test_the_service_is_found_as_it_is_configured(env, url):
    assert cli_client.service_url(env) == url


@pytest.fixture
def dialled(monkeypatch):
    """The base URLs the commands open clients on; every request answers 404."""
    urls = []

    def client(url, token):
        urls.append(url)
        return httpx.Client(
            base_url=url,
            transport=httpx.MockTransport(
                lambda request: httpx.Response(404, json={"detail": "job 75190f2c not found"})
            ),
        )

    monkeypatch.setattr(cli_client, "client", client)
    for name in ("TRAINYARD_URL", "TRAINYARD_HOST", "TRAINYARD_PORT"):
        monkeypatch.delenv(name, raising=False)
    return urls


@pytest.mark.parametrize(
    "env, args, url",
    [
        ({"TRAINYARD_PORT": "8123"}, [], "http://127.0.0.1:8123"),
        ({"TRAINYARD_HOST": "0.0.0.0", "TRAINYARD_PORT": "8124"}, [], "http://127.0.0.1:8124"),
        ({"TRAINYARD_URL": "http://127.0.0.1:8125", "TRAINYARD_PORT": "8123"}, [], "http://127.0.0.1:8125"),
        ({"TRAINYARD_URL": "http://127.0.0.1:8125"}, ["--url", "http://127.0.0.1:8126"], "http://127.0.0.1:8126"),
        ({}, [], "http://127.0.0.1:8000"),
    ],
)
def test_commands_dial_the_configured_service(dialled, env, args, url):
    result = CliRunner().invoke(cli_main.app, ["jobs", "show", "75190f2c", *args], env=env)
    assert dialled == [url] and result.exit_code != 0


@pytest.mark.parametrize(
    "env, before, after, url",
    [
        ({}, ["--url", "http://127.0.0.1:8127"], [], "http://127.0.0.1:8127"),
        ({"TRAINYARD_URL": "http://127.0.0.1:8125"}, ["--url", "http://127.0.0.1:8127"], [], "http://127.0.0.1:8127"),
        ({}, ["--url", "http://127.0.0.1:8127"], ["--url", "http://127.0.0.1:8126"], "http://127.0.0.1:8126"),
    ],
)
def test_url_may_come_before_the_command(dialled, env, before, after, url):
    """`trainyard --url X jobs show ID` as well as `trainyard jobs show ID --url X`; the command's
    own option wins, and either wins over TRAINYARD_URL."""
    result = CliRunner().invoke(cli_main.app, [*before, "jobs", "show", "75190f2c", *after], env=env)
    assert dialled == [url] and str(result.exception) == "404 job 75190f2c not found"


@pytest.mark.parametrize(
    "given, told",
    [
        (
            "127.0.0.1:8650",
            "'127.0.0.1:8650' is not a URL: give the service's base URL, such as http://127.0.0.1:8650",
        ),
        ("http://127.0.0.1:8650/v1/", "ends with /v1: give the service's base URL, http://127.0.0.1:8650"),
    ],
)
def test_a_url_that_cannot_be_the_service_is_a_usage_error(dialled, given, told):
    for args in (["--url", given, "jobs", "list"], ["jobs", "list", "--url", given]):
        result = CliRunner().invoke(cli_main.app, args, env={"COLUMNS": "200"})
        assert dialled == [] and result.exit_code == cli_client.USAGE
        assert "Invalid value for '--url' (env var: 'TRAINYARD_URL'): " in result.output and told in result.output
    from_env = CliRunner().invoke(cli_main.app, ["jobs", "list"], env={"TRAINYARD_URL": given, "COLUMNS": "200"})
    assert from_env.exit_code == cli_client.USAGE and told in from_env.output, from_env.output


def test_token_may_come_before_the_command(monkeypatch):
    sent = []

    def client(url, token):
        sent.append(token)
        return httpx.Client(base_url=url, transport=httpx.MockTransport(lambda request: httpx.Response(404)))

    monkeypatch.setattr(cli_client, "client", client)
    runner = CliRunner()
    runner.invoke(cli_main.app, ["--token", "early", "jobs", "show", "75190f2c"], env={"TRAINYARD_TOKEN": "env"})
    runner.invoke(cli_main.app, ["--token", "early", "jobs", "show", "75190f2c", "--token", "late"])
    runner.invoke(cli_main.app, ["jobs", "show", "75190f2c"], env={"TRAINYARD_TOKEN": "env"})
    assert sent == ["early", "late", "env"]


def test_an_upload_refusal_names_the_flags(monkeypatch, tmp_path):
    """The service's 422 locates a form field (body.name) and its messages name others
    (min_per_class); the CLI's user typed flags, so it names those."""
    detail = [
        {"loc": ["body", "name"], "msg": "Value error, a dataset name cannot hold '/'"},
        {"loc": ["body", "image_size"], "msg": "Input should be greater than 0"},
        {"loc": ["body", "file"], "msg": "fewer than min_per_class=6 training images"},
    ]
    answer = httpx.MockTransport(lambda request: httpx.Response(422, json={"detail": detail}))
    monkeypatch.setattr(cli_client, "client", lambda url, token: httpx.Client(base_url=url, transport=answer))
    archive = tmp_path / "pets.zip"
    archive.write_bytes(b"PK")
    result = CliRunner().invoke(cli_main.app, ["datasets", "upload", str(archive), "--name", "a/b"])
    assert str(result.exception) == (
        "422 --name: Value error, a dataset name cannot hold '/'; --image-size: Input should be greater than 0; "
        "body.file: fewer than --min-per-class=6 training images"
    )


@pytest.mark.parametrize(
    "args, param, told",
    [
        (["models", "params", "m", "--max-values", "-1"], "max_values", "422 --max-values: no"),
        (["plot", *"abcdefghi", "-o", "x.png"], "jobs", "422 JOB: no"),
    ],
)
def test_a_refused_query_parameter_is_named_as_the_command_takes_it(monkeypatch, tmp_path, args, param, told):
    detail = [{"loc": ["query", param], "msg": "no"}]
    answer = httpx.MockTransport(lambda request: httpx.Response(422, json={"detail": detail}))
    monkeypatch.setattr(cli_client, "client", lambda url, token: httpx.Client(base_url=url, transport=answer))
    monkeypatch.chdir(tmp_path)
    assert str(CliRunner().invoke(cli_main.app, args).exception) == told


def test_a_refusal_is_one_line_on_stderr_without_error_twice(dialled, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["trainyard", "jobs", "show", "75190f2c"])
    with pytest.raises(SystemExit) as exit_:
        cli_main.main()
    captured = capsys.readouterr()
    assert exit_.value.code == cli_client.USAGE and captured.out == ""
    assert captured.err == "error: 404 job 75190f2c not found\n"


def help_rows(*command: str) -> dict[str, str]:
    """The help's option rows, by their long option."""
    result = CliRunner().invoke(cli_main.app, [*command, "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    return {line.split()[1]: line for line in result.output.splitlines() if line.startswith("│ --")}


def test_flags_are_shown_as_plain_flags_in_the_help():
    rows = help_rows("submit")
    for flag in ("--follow", "--json", "--help"):
        assert "<bool>" not in rows[flag] and "-f" in rows["--follow"]
    assert "<str>" in rows["--url"] and "TRAINYARD_PORT" in rows["--url"]
    assert "<bool>" not in help_rows("logs")["--follow"] and "<int>" in help_rows("jobs", "list")["--limit"]


def test_each_commands_summary_in_the_list_is_one_flowing_line():
    """A docstring's line breaks are not the list's: at 200 columns each summary is one row."""
    result = CliRunner().invoke(cli_main.app, ["--help"], env={"COLUMNS": "200"})
    rows = [line for line in result.output.splitlines() if line.startswith("│ sample-data") or "28x28" in line]
    assert len(rows) == 1 and "28x28 grey PNGs in the class folders" in rows[0], result.output
    result = CliRunner().invoke(cli_main.app, ["jobs", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "│ show " in result.output


EPOCH = {"epoch": 7, "train_loss": 0.51234, "test_loss": 0.54321, "test_acc": 0.8231}


def test_the_epoch_summary_is_short():
    assert cli_client.epoch_summary(EPOCH) == "train loss 0.512, test acc 0.823"
    regression = {**EPOCH, "train_loss": 0.000123456, "test_loss": 1234.5, "test_acc": None}
    assert cli_client.epoch_summary(regression) == "train loss 0.000123, test loss 1.23e+03"


@pytest.mark.parametrize("name", ["lenet", "lenet-fashion", "a rather long job name for a progress bar"])
@pytest.mark.parametrize("status", ["queued", "running", "cancelling", "succeeded", "failed"])
def test_the_progress_line_fits_80_columns_with_the_test_accuracy_whole(name, status):
    out = io.StringIO()
    console = Console(file=out, width=80, color_system=None)
    progress = Progress(*cli_client.progress_columns(), console=console, auto_refresh=False)
    task = progress.add_task("train", total=10, name=name, status=status, metrics=cli_client.epoch_summary(EPOCH))
    progress.update(task, completed=10)
    console.print(progress.make_tasks_table(progress.tasks))
    (line,) = out.getvalue().splitlines()
    assert len(line.rstrip()) <= 80 and line.startswith(name[:10])
    assert f"10/10 {status} train loss 0.512, test acc 0.823 " in line


def test_piped_tables_are_not_cut_to_80_columns():
    import os
    import subprocess
    import sys

    from tests.support.servers import REPO

    script = (
        "from rich.table import Table\nfrom service.cli.client import console\n"
        "table = Table('id', 'status', 'reason', 'error')\n"
        "table.add_row('0123456789abcdef0123456789abcdef0123', 'succeeded', 'missing_weights', 'x' * 60)\n"
        "console.print(table)"
    )
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, check=True
    ).stdout
    assert "0123456789abcdef0123456789abcdef0123" in out and "missing_weights" in out and "x" * 60 in out


def test_client_commands_start_without_the_database_or_training_stack():
    """`trainyard jobs list` and the like talk HTTP only: they import neither SQLAlchemy, the
    settings, Celery nor torch (those took a second of every command's start)."""
    import subprocess
    import sys

    from tests.support.servers import REPO, free_port

    script = (
        "import sys\nfrom service.cli.main import main\n"
        f"sys.argv = ['trainyard', 'jobs', 'list', '--url', 'http://127.0.0.1:{free_port()}']\n"
        "try:\n    main()\nexcept SystemExit as exit_:\n    print('exit', exit_.code)\n"
        "print(sorted(m for m in ('sqlalchemy', 'pydantic_settings', 'celery', 'torch') if m in sys.modules))"
    )
    run = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.stdout.splitlines() == [f"exit {cli_client.UNREACHABLE}", "[]"], run.stdout + run.stderr


def test_export_takes_the_format_from_the_output_name(monkeypatch, tmp_path):
    asked = []

    def answer(request):
        asked.append(dict(request.url.params))
        return httpx.Response(200, content=b"model bytes")

    transport = httpx.MockTransport(answer)
    monkeypatch.setattr(cli_client, "client", lambda url, token: httpx.Client(base_url=url, transport=transport))
    runner = CliRunner()
    for name, fmt in (
        ("m.onnx", "onnx"),
        ("m.pt2", "pt2"),
        ("m.pt", "torchscript"),
        ("m.pts", "torchscript"),
        ("m.torchscript", "torchscript"),  # the format's own name
        ("m.safetensors", "safetensors"),
        ("m.bin", "safetensors"),
    ):
        result = runner.invoke(cli_main.app, ["models", "export", "shoes:1", "-o", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        assert asked[-1] == {"format": fmt, "inputs": "float"} and (tmp_path / name).read_bytes() == b"model bytes"
        assert ("names no export format" in result.stderr) == (name == "m.bin"), result.stderr
    pixels = runner.invoke(
        cli_main.app, ["models", "export", "shoes:1", "-o", str(tmp_path / "p.onnx"), "--inputs", "pixels"]
    )
    assert pixels.exit_code == 0 and asked[-1] == {"format": "onnx", "inputs": "pixels"}
    contrary = runner.invoke(
        cli_main.app,
        ["models", "export", "shoes:1", "-o", str(tmp_path / "x.onnx"), "--format", "torchscript"],
        env={"COLUMNS": "200"},
    )
    assert contrary.exit_code == cli_client.USAGE and "-o x.onnx asks for onnx: give -o a .pt name" in contrary.output
    unknown = runner.invoke(
        cli_main.app,
        ["models", "export", "shoes:1", "-o", str(tmp_path / "y.onnx"), "--format", "ONNX"],
        env={"COLUMNS": "200"},
    )
    assert (
        unknown.exit_code == cli_client.USAGE
        and "'ONNX' is not one of safetensors, pt2, torchscript, onnx" in unknown.output
    )
    assert len(asked) == 8


def test_metrics_of_a_job_with_no_epoch_yet_say_so_instead_of_an_empty_table(monkeypatch):
    assert cli_client.metrics_table({"epochs": [], "best_epoch": None}) == ["no epoch has ended yet"]
    job_id = "ce1e688b-0c3d-4e5f-8a9b-0123456789ab"
    job = {"id": job_id, "status": "failed", "reason": "invalid_data"}
    answers = {f"/v1/jobs/{job_id}/metrics": {"job_id": job_id, "epochs": []}, f"/v1/jobs/{job_id}": job}
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=answers[request.url.path]))
    monkeypatch.setattr(cli_client, "client", lambda url, token: httpx.Client(base_url=url, transport=transport))
    out = io.StringIO()
    monkeypatch.setattr(cli_client, "console", Console(file=out, width=200, color_system=None))
    assert CliRunner().invoke(cli_main.app, ["metrics", job_id]).exit_code == 0
    assert out.getvalue().strip() == "job ce1e688b failed (invalid_data) before an epoch ended"


def test_the_metrics_table_heads_its_best_column_and_an_evaluation_without_mistakes_says_so():
    from rich.console import Console

    epoch = dict.fromkeys(("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc"), 0.5)
    answer = {
        "epochs": [{**epoch, "epoch": 1, "samples_per_second": 10.0}, {**epoch, "epoch": 2, "samples_per_second": 9.0}],
        "best_epoch": 2,
        "best_selected_on": "test_loss",
    }
    table, note = cli_client.metrics_table(answer)
    console = Console(width=200, record=True)
    console.print(table)
    header, *rows = [
        [cell.strip() for cell in line.replace("┃", "│").split("│")[1:-1]]
        for line in console.export_text().splitlines()
        if line[:1] in "┃│"
    ]
    assert (header[-1], rows[0][-1], rows[1][-1]) == ("best", "", "*")
    assert header[1:7] == ["train loss", "train acc", "val loss", "val acc", "test loss", "test acc"]
    assert note == "best: epoch 2, chosen on test_loss"
    regression = dict.fromkeys(("train_acc", "val_loss", "val_acc", "test_acc"))  # no validation split
    table, note = cli_client.metrics_table({**answer, "epochs": [{**row, **regression} for row in answer["epochs"]]})
    console = Console(width=200, record=True)
    console.print(table)
    assert "train loss" in console.export_text() and " acc " not in console.export_text()
    assert "val loss" not in console.export_text()
    averages = dict.fromkeys(("precision", "recall", "f1", "support"), 1)
    report = {
        "model": {"reference": "job:abc", "epoch": 2},
        "num_test": 4,
        "accuracy": 1.0,
        "top_k_accuracy": {"1": 1.0},
        "classes": [],
        "macro_avg": averages,
        "weighted_avg": averages,
        "thresholds": [],
        "mistakes": [],
        "confusion_matrix": [],
    }
    assert cli_client.evaluation_views(report, "http://x")[-1] == "no mistakes: every test example is right"
    scores = dict.fromkeys(("precision", "recall", "f1", "support"), 0.5)
    report |= {"classes": [{**scores, "label": name} for name in ("cat", "dog")], "confusion_matrix": [[7, 1], [2, 5]]}
    console = Console(width=200, record=True)
    console.print(cli_client.evaluation_views(report, "http://x")[2])
    rows = [line.split() for line in console.export_text().splitlines()]
    assert ["│", "cat", "│", "7", "│", "1", "│"] in rows and ["│", "dog", "│", "2", "│", "5", "│"] in rows, rows
    many = {**report, "classes": [{**scores, "label": str(i)} for i in range(21)]}
    assert "21 classes, too many to show" in cli_client.evaluation_views(many, "http://x")[2]


def test_a_dataset_is_shown_with_its_classes_and_a_regression_set_without():
    dataset = {
        "id": "0a1b2c3d-0000-4000-8000-000000000000",
        "name": "rows",
        "status": "ready",
        "kind": "csv",
        "task": "regression",
        "input_shape": [3],
        "classes": None,
        "num_train": 80,
        "num_test": 20,
    }
    [line] = cli_client.dataset_lines(dataset)
    assert line.endswith("csv, regression, 3 features, 80 train / 20 test") and "None" not in line
    [line] = cli_client.dataset_lines({**dataset, "task": "classification", "classes": ["a", "b"]})
    assert line.endswith("80 train / 20 test, classes a, b")
    shown, columns = cli_client.dataset_lines({**dataset, "columns": ["age", "height", "weight"]})
    assert columns == "features (a --row's order): age, height, weight"


def test_jobs_list_asks_for_every_status_given(monkeypatch):
    asked = []

    def answer(request):
        asked.append(request.url.params.get_list("status"))
        return httpx.Response(200, json={"data": [], "count": 0})

    transport = httpx.MockTransport(answer)
    monkeypatch.setattr(cli_client, "client", lambda url, token: httpx.Client(base_url=url, transport=transport))
    result = CliRunner().invoke(cli_main.app, ["jobs", "list", "--status", "failed", "--status", "pruned"])
    assert result.exit_code == 0, result.output
    assert asked == [["failed", "pruned"]]


def test_predict_sends_numeric_rows_as_json_and_shows_their_values(monkeypatch):
    sent = []

    def answer(request):
        sent.append(json.loads(request.content))
        return httpx.Response(200, json={"model": {}, "predictions": [{"value": 1.5}, {"value": -0.25}]})

    transport = httpx.MockTransport(answer)
    monkeypatch.setattr(cli_client, "client", lambda url, token: httpx.Client(base_url=url, transport=transport))
    runner = CliRunner()
    result = runner.invoke(
        cli_main.app, ["predict", "job:abcdef", "--row", "1,2", "--row", "3,4.5"], env={"COLUMNS": "120"}
    )
    assert result.exit_code == 0, result.output
    assert sent == [{"model": "job:abcdef", "inputs": [[1.0, 2.0], [3.0, 4.5]], "top_k": 1}]
    assert "1.5" in result.output and "-0.25" in result.output
    neither = runner.invoke(cli_main.app, ["predict", "job:abcdef"], env={"COLUMNS": "200"})
    assert neither.exit_code == cli_client.USAGE and "give image files, or --row" in neither.output
    wrong = runner.invoke(cli_main.app, ["predict", "job:abcdef", "--row", "1,x"], env={"COLUMNS": "200"})
    assert wrong.exit_code == cli_client.USAGE and "numbers separated by commas" in wrong.output


def test_predict_sends_more_files_than_a_request_takes_in_several_in_order(monkeypatch, tmp_path):
    """70 files to a service taking 64 per request, then one configured to take 30: every file is
    answered, in order, in as many requests as it takes."""
    images = []
    for number in range(70):
        images.append(tmp_path / f"{number:02d}.png")
        images[-1].write_bytes(b"png")
    for limit, requests in ((64, [64, 6]), (30, [64, 30, 30, 10])):  # the first refused, then 30 each
        sent = []

        answered = []

        def answer(request, limit=limit, sent=sent, answered=answered):
            names = re.findall(rb'filename="(\d+)\.png"', request.content)
            model = re.search(rb'name="model"\r\n\r\n([^\r]+)', request.content)[1].decode()
            assert model == ("m:3" if answered else "m"), model  # after the first answer: its version
            sent.append(len(names))
            answered.extend([True] if len(names) <= limit else [])
            if len(names) > limit:
                return httpx.Response(
                    422, json={"detail": [{"msg": f"{len(names)} files sent; at most {limit} per request"}]}
                )
            predictions = [
                {"filename": f"{n.decode()}.png", "label": "a", "probability": 1.0, "top_k": []} for n in names
            ]
            return httpx.Response(200, json={"model": {"name": "m", "version": 3}, "predictions": predictions})

        transport = httpx.MockTransport(answer)
        monkeypatch.setattr(
            cli_client, "client", lambda url, token, t=transport: httpx.Client(base_url=url, transport=t)
        )
        result = CliRunner().invoke(cli_main.app, ["predict", "m", *map(str, images), "--json"])
        assert result.exit_code == 0, result.output
        assert sent == requests
        answered = json.loads(result.output)
        assert [p["filename"] for p in answered["predictions"]] == [image.name for image in images]
        assert answered["model"] == {"name": "m", "version": 3}


def test_predict_answers_the_files_it_can_read_and_names_the_others(service_env, trained_job, monkeypatch, tmp_path):
    """A folder with a text file called .png and an empty file in it: the other images are answered,
    each unreadable one said on stderr, and the exit status says not all were (the service's own
    answers, through the app in this process)."""
    from tests.support.api import make_api
    from tests.support.datagen import png_bytes

    # the app as make_api gives it, its lifespan (reaper, GC tuning) not started by the CLI's `with`
    monkeypatch.setattr(cli_client, "client", lambda url, token: contextlib.nullcontext(make_api()))
    names = ["a.png", "notes.png", "b.png", "empty.png", "c.png"]
    contents = [png_bytes(1, seed=1), b"not an image", png_bytes(2, seed=2), b"", png_bytes(3, seed=3)]
    for name, content in zip(names, contents, strict=True):
        (tmp_path / name).write_bytes(content)
    runner = CliRunner()
    args = ["predict", f"job:{trained_job}", *(str(tmp_path / name) for name in names)]
    shown = runner.invoke(cli_main.app, args, env={"COLUMNS": "200"})
    assert shown.exit_code == cli_client.USAGE, shown.output
    assert [name for name in ("a.png", "b.png", "c.png") if name in shown.stdout] == ["a.png", "b.png", "c.png"]
    assert "error: notes.png: " in shown.stderr and "error: empty.png: " in shown.stderr
    answered = json.loads(runner.invoke(cli_main.app, [*args, "--json"]).stdout)
    assert [p["filename"] for p in answered["predictions"]] == ["a.png", "b.png", "c.png"]
    assert [r["filename"] for r in answered["refused"]] == ["notes.png", "empty.png"]
    alone = runner.invoke(cli_main.app, ["predict", f"job:{trained_job}", str(tmp_path / "notes.png"), "--json"])
    assert alone.exit_code == cli_client.USAGE and json.loads(alone.stdout)["predictions"] == []
    for folder, content in (("cat", png_bytes(1, seed=1)), ("dog", b"not an image")):  # one name in two folders
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "1.png").write_bytes(content)
    twins = [str(tmp_path / folder / "1.png") for folder in ("cat", "dog")]
    answered = json.loads(runner.invoke(cli_main.app, ["predict", f"job:{trained_job}", *twins, "--json"]).stdout)
    assert [p["filename"] for p in answered["predictions"]] == [twins[0]]
    assert [r["filename"] for r in answered["refused"]] == [twins[1]]
    given = [tmp_path / "a" / "x.png", tmp_path / "b" / "x.png", tmp_path / "a" / "x.png", tmp_path / "y.png"]
    sent_as = [str(given[0]) + " #1", str(given[1]), str(given[0]) + " #2", "y.png"]
    assert cli_client._upload_names(given) == sent_as  # each told apart in the table and in errors


def test_a_submission_whose_answer_is_lost_is_sent_again_under_the_same_key(monkeypatch, tmp_path):
    sent = []

    def answer(request):
        sent.append(request.headers.get("idempotency-key"))
        if len(sent) == 1:
            raise httpx.ReadTimeout("no answer", request=request)
        if len(sent) == 2:
            return httpx.Response(503, json={"detail": "the database is unavailable"})
        if len(sent) == 3:
            raise httpx.ConnectError("refused while it restarts", request=request)
        return httpx.Response(202, json={"id": "75190f2c", "status": "queued"})

    transport = httpx.MockTransport(answer)
    monkeypatch.setattr(cli_client, "client", lambda url, token: httpx.Client(base_url=url, transport=transport))
    monkeypatch.setattr(cli_client, "RESUBMIT_WAITS", (0, 0, 0))
    spec = tmp_path / "job.json"
    spec.write_text("{}")
    result = CliRunner().invoke(cli_main.app, ["submit", str(spec), "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["id"] == "75190f2c", result.output
    assert len(sent) == 4 and sent[0].startswith("cli-") and len(set(sent)) == 1
    assert "note:" not in result.output  # its own retries are not the user's rerun
    sent.clear()
    result = CliRunner().invoke(cli_main.app, ["sweep", str(spec), "--idempotency-key", "nightly-7", "--json"])
    assert sent == ["nightly-7"] * 4, result.output
    for bad in ("", " ", "tab\there", "x" * 201):
        refused = CliRunner().invoke(cli_main.app, ["submit", str(spec), "--idempotency-key", bad])
        said = re.sub(r"[\s│]+", " ", refused.output)  # the message as one line, out of its box
        assert refused.exit_code == 2 and "cannot be an idempotency key" in said, (bad, refused.output)


def test_a_rerun_under_the_same_key_says_it_made_nothing_new(monkeypatch, tmp_path):
    def answer(request):
        return httpx.Response(200, json={"id": "75190f2c", "status": "queued"}, headers={"Idempotent-Replayed": "true"})

    transport = httpx.MockTransport(answer)
    monkeypatch.setattr(cli_client, "client", lambda url, token: httpx.Client(base_url=url, transport=transport))
    spec = tmp_path / "job.json"
    spec.write_text("{}")
    result = CliRunner().invoke(cli_main.app, ["submit", str(spec), "--idempotency-key", "[nightly]", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["id"] == "75190f2c"
    assert "submitted before under idempotency key '[nightly]'" in result.stderr


def test_a_missing_token_is_told_how_to_give_one(monkeypatch):
    transport = httpx.MockTransport(lambda request: httpx.Response(401, json={"detail": "missing bearer token"}))
    monkeypatch.setattr(cli_client, "client", lambda url, token: httpx.Client(base_url=url, transport=transport))
    result = CliRunner().invoke(cli_main.app, ["jobs", "list"])
    assert str(result.exception) == "401 missing bearer token; give a token with --token or TRAINYARD_TOKEN"


def test_a_submission_refused_is_not_sent_again(monkeypatch, tmp_path):
    sent = []

    def answer(request):
        sent.append(request)
        return httpx.Response(422, json={"detail": [{"loc": ["body", "epochs"], "msg": "Field required"}]})

    transport = httpx.MockTransport(answer)
    monkeypatch.setattr(cli_client, "client", lambda url, token: httpx.Client(base_url=url, transport=transport))
    spec = tmp_path / "job.json"
    spec.write_text("{}")
    result = CliRunner().invoke(cli_main.app, ["submit", str(spec)])
    assert len(sent) == 1 and "epochs: Field required" in str(result.exception)


def test_unalias_removes_an_alias_and_warns_of_what_changes(monkeypatch):
    asked = []

    def answer(request):
        asked.append((request.method, request.url.path))
        warnings = ["version 4 takes 3x8x8 inputs where version 1 takes 1x28x28; 'shoes' now means version 4"]
        return httpx.Response(200, json={"name": "shoes", "aliases": {}, "versions": [], "warnings": warnings})

    transport = httpx.MockTransport(answer)
    monkeypatch.setattr(cli_client, "client", lambda url, token: httpx.Client(base_url=url, transport=transport))
    result = CliRunner().invoke(cli_main.app, ["models", "unalias", "shoes", "production"])
    assert result.exit_code == 0 and asked == [("DELETE", "/v1/models/shoes/aliases/production")]
    assert "shoes@production removed" in result.stdout and "1x28x28" in result.stderr


def test_a_numeric_models_mistakes_have_no_image_to_link():
    import torch

    from models.inference.evaluation import evaluate
    from service.api.schemas.evaluation import evaluation_public
    from service.core.references import ResolvedCheckpoint
    from service.core.storage import StoredFile

    report = evaluate(torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]]), torch.tensor([1, 1, 0]), ["cheap", "dear"])
    target = ResolvedCheckpoint("job:75190f2c", StoredFile("k", 1, None), "75190f2c", 3)
    rows = evaluation_public("75190f2c", target, report, limit=5, images=False).model_dump(mode="json")
    images = evaluation_public("75190f2c", target, report, limit=5).model_dump(mode="json")
    assert [m["image_url"] for m in rows["mistakes"]] == [None]
    assert images["mistakes"][0]["image_url"] == "/v1/jobs/75190f2c/test-images/0.png"
    summary, *_, mistakes = cli_client.evaluation_views(rows, "http://x")
    assert "on 3 test examples" in summary
    console = Console(record=True, width=120)
    console.print(mistakes)
    shown = console.export_text()
    assert "http://x" not in shown and "cheap" in shown, shown


def test_tables_show_a_diverged_loss_and_a_tiny_learning_rate_as_they_are_and_why_a_trial_failed():
    """A loss of 1.6e11 is not 27 digits and a learning rate of 1e-9 is not 0.0000; a failed
    trial's row says its reason."""
    assert cli_client._fmt(156_271_930_123.5) == "1.563e+11"
    assert cli_client._fmt(1e-9) == "1e-09" and cli_client._fmt(0.0) == "0.0000"
    assert cli_client._fmt(0.12345) == "0.1235" and cli_client._fmt(18039.0, 0) == "18039"
    sweep = {
        "id": "5f0c3f8e-0000-4000-8000-000000000000",
        "name": "lr",
        "status": "finished",
        "search": "grid",
        "pruner": None,
        "launched": 2,
        "trials": 2,
        "epochs_spent": 6,
        "mode": "min",
        "metric": "test_loss",
        "jobs": [
            {"trial": 0, "job_id": "a" * 36, "status": "succeeded", "reason": None, "params": {"optimizer.lr": 1e-9}},
            {
                "trial": 1,
                "job_id": "b" * 36,
                "status": "failed",
                "reason": "nan_loss",
                "params": {"optimizer.lr": 0.01},
            },
        ],
    }
    sweep["jobs"][0] |= {"epochs": 5, "metric": 3.2e26}
    sweep["jobs"][1] |= {"epochs": 1, "metric": None}
    out = io.StringIO()
    Console(file=out, width=160, color_system=None).print(cli_client.sweep_table(sweep))
    rows = out.getvalue()
    assert "1e-09" in rows and "3.2e+26" in rows and "failed (nan_loss)" in rows, rows
    assert "succeeded (" not in rows


def test_a_stopped_sweep_says_why_and_its_trials_errors_once_each():
    gone = "dataset mnist: no files in /data"
    trial = {"job_id": "a" * 36, "status": "failed", "reason": "invalid_data", "params": {"seed": 1}, "epochs": 0}
    sweep = {
        "id": "5f0c3f8e-0000-4000-8000-000000000000",
        "name": "no-data",
        "status": "failed",
        "stopped": "trials 0, 1 and 2 failed alike (invalid_data: ...)",
        "search": "grid",
        "pruner": None,
        "launched": 4,
        "trials": 5,
        "epochs_spent": 0,
        "mode": "max",
        "metric": "test_acc",
        "jobs": [
            *({**trial, "trial": n, "metric": None, "error": gone} for n in (2, 0, 1)),
            {**trial, "trial": 3, "status": "invalid", "job_id": None, "metric": None, "error": "lr: must be > 0"},
            {**trial, "trial": 4, "status": "cancelled", "job_id": None, "metric": None, "error": None},
        ],
    }
    assert cli_client.sweep_notes(sweep) == [
        "stopped: trials 0, 1 and 2 failed alike (invalid_data: ...)",
        f"trials 0, 1, 2 failed: {gone}",
        "trial 3 invalid: lr: must be > 0",
    ]
    assert len(cli_client.sweep_notes(sweep, most=1)) == 3  # the stop, the first error, and how many more
    sweep["stopped"] = f"trials 0, 1 and 2 failed alike (invalid_data: {gone}), so the sweep launched no more: lr"
    assert cli_client.sweep_notes(sweep)[1:] == ["trial 3 invalid: lr: must be > 0"]  # said once


def test_a_message_on_stderr_stays_one_line_when_piped(capsys):
    """A failure's message is one line however long, as grep and logs want it (not cut at 80)."""
    message = "job 1234 failed: nan_loss " + "training loss became nan in epoch 1; lower the learning rate " * 3
    cli_client.err.print(message, markup=False)
    assert capsys.readouterr().err == message + "\n"


def test_probabilities_and_thresholds_near_0_or_1_are_not_rounded_onto_them():
    assert cli_client._share(0.9999999, 3) == "0.9999999" and cli_client._share(0.0000004, 2) == "0.0000004"
    assert cli_client._share(0.5, 3) == "0.500" and cli_client._share(1.0, 3) == "1.000"
    assert cli_client._share(6.1e-25, 2) == "6.1e-25" and cli_client._share(1 - 3e-13, 3) == "1 - 3.0e-13"
    shortest = [cli_client._share(t, 10, shortest=True) for t in (0.6, 0.9999999, 1 - 1e-11, 0.0, 1.0)]
    assert shortest == ["0.6", "0.9999999", "1 - 1.0e-11", "0", "1"]  # a threshold as given
    answer = {"predictions": [{"label": "red", "probability": 0.99996, "below_threshold": True, "top_k": []}]}
    out = io.StringIO()
    Console(file=out, width=120, color_system=None).print(cli_client.predictions_table(answer)[0])
    assert "not sure" in out.getvalue() and "0.99996" in out.getvalue(), out.getvalue()
    assert len(cli_client.predictions_table(answer)) == 1  # no threshold applied: none said
    said = cli_client.predictions_table({**answer, "threshold": 0.99997})[1]
    assert said == 'threshold 0.99997: a top probability below it is "not sure"'  # the version's, applied unasked


def test_following_a_job_names_the_epoch_it_serves_when_that_is_not_its_last(monkeypatch):
    """The bar ends on the last epoch's test accuracy; job:<id> serves the best epoch, which may be another."""
    job_id = "5f0c3f8e-0000-4000-8000-000000000000"
    job = {"id": job_id, "name": "q", "status": "succeeded", "reason": None, "error": None, "epochs": 20}
    best = {"epoch": 14, "train_loss": 0.1, "test_acc": 0.95, "test_loss": 0.2}
    monkeypatch.setattr(cli_client, "events", lambda api, job_id: iter(()))
    for last, shown in ((20, True), (14, False)):
        out = io.StringIO()
        monkeypatch.setattr(cli_client, "console", Console(file=out, width=200, color_system=None))
        answer = {**job, "epoch": last, "best_selected_on": "val_acc", "best_metrics": best}
        transport = httpx.MockTransport(lambda request, answer=answer: httpx.Response(200, json=answer))
        with httpx.Client(base_url="http://trainyard.test", transport=transport) as api:
            cli_client.follow(api, job_id)
        said = "job:5f0c3f8e serves epoch 14, its best by val_acc: train loss 0.1, test acc 0.950"
        assert (said in out.getvalue()) is shown, out.getvalue()


def test_cancel_by_a_short_id_says_the_jobs_full_id(monkeypatch):
    full = "ddd89221-5b4c-4a8e-9d7e-3f0c2a1b6e55"

    def answer(request):
        assert request.url.path == "/v1/jobs/ddd89221/cancel"
        return httpx.Response(202, json={"id": full, "status": "cancelling"})

    transport = httpx.MockTransport(answer)
    monkeypatch.setattr(cli_client, "client", lambda url, token: httpx.Client(base_url=url, transport=transport))
    result = CliRunner().invoke(cli_main.app, ["jobs", "cancel", "ddd89221"])
    assert result.exit_code == 0 and result.stdout == f"job {full} cancelling\n", result.output


def test_a_sweep_sent_to_submit_or_a_job_to_sweep_is_told_the_other_command_before_any_request(monkeypatch, tmp_path):
    monkeypatch.setattr(cli_client, "client", lambda url, token: pytest.fail("no request is sent"))
    sweep, job = tmp_path / "sweep.json", tmp_path / "job.json"
    sweep.write_text(json.dumps({"base": {"model": {"arch": "mlp"}}, "grid": {"optimizer.lr": [0.1]}}))
    job.write_text(json.dumps({"model": {"arch": "mlp"}, "data": {"dataset": "mnist"}}))
    told = CliRunner().invoke(cli_main.app, ["submit", str(sweep)])
    assert isinstance(told.exception, cli_client.Failure) and told.exception.code == cli_client.USAGE
    assert f"send it with trainyard sweep {sweep}" in str(told.exception)
    told = CliRunner().invoke(cli_main.app, ["sweep", str(job)])
    assert isinstance(told.exception, cli_client.Failure) and told.exception.code == cli_client.USAGE
    assert f"send it with trainyard submit {job}" in str(told.exception)
