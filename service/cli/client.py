"""The client half of the `trainyard` command: it talks to the REST API, local or remote."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console()
err = Console(stderr=True)

UrlOption = Annotated[str, typer.Option("--url", envvar="TRAINYARD_URL", help="the service's base URL")]
TokenOption = Annotated[str | None, typer.Option("--token", envvar="TRAINYARD_TOKEN", help="an API token")]
DEFAULT_URL = "http://127.0.0.1:8000"


def client(url: str, token: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=url, headers=headers, timeout=60)


def checked(response: httpx.Response) -> dict:
    """The JSON body, or a clear message and exit status 1 for an error answer."""
    if response.is_success:
        return response.json() if response.content else {}
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    if isinstance(detail, list):
        detail = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', []))}: {e.get('msg')}" for e in detail)
    err.print(f"[red]error {response.status_code}:[/red] {detail}")
    raise typer.Exit(1)


def _fmt(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


WAITING = {"no_worker": "no live worker serves its queue; start one with `trainyard worker`",
           "no_gpu_worker": "it asks for a GPU and no live worker with a GPU serves the GPU queue"}


def follow(api: httpx.Client, job_id: str) -> str:
    """Show a live progress bar from the job's event stream; returns its final status."""
    job = checked(api.get(f"/v1/jobs/{job_id}"))
    final = job["status"]
    columns = [TextColumn("[bold]{task.fields[name]}"), BarColumn(), TextColumn("epoch {task.completed}/{task.total}"),
               TextColumn("{task.fields[status]}"), TextColumn("{task.fields[metrics]}"), TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("train", total=job["epochs"], name=job["name"] or job_id[:8], status=job["status"],
                                 metrics="")
        with api.stream("GET", f"/v1/jobs/{job_id}/events", timeout=None) as stream:
            event = None
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    event = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    data = json.loads(line.removeprefix("data: "))
                    if event == "status":
                        progress.update(task, status=data["to_status"] + (f" ({data['reason']})" if data["reason"] else ""))
                    elif event == "waiting":
                        if data["reason"]:
                            err.print(f"[yellow]job {job_id} is waiting: {WAITING.get(data['reason'], data['reason'])}"
                                      "[/yellow]")
                        progress.update(task, status="queued" + (f" ({data['reason']})" if data["reason"] else ""))
                    elif event == "epoch":
                        text = f"loss {_fmt(data['train_loss'])}  test loss {_fmt(data['test_loss'])}"
                        if data["test_acc"] is not None:
                            text += f"  test acc {_fmt(data['test_acc'], 3)}"
                        progress.update(task, completed=data["epoch"], metrics=text)
                    elif event == "end":
                        final = data["status"]
    job = checked(api.get(f"/v1/jobs/{job_id}"))
    if job["status"] != "succeeded":
        err.print(f"[red]job {job_id} {job['status']}[/red]: {job['reason'] or ''} {job['error'] or ''}".rstrip())
    else:
        console.print(f"[green]job {job_id} succeeded[/green]" + (f" ({job['reason']})" if job["reason"] else ""))
    return final


def register(app: typer.Typer) -> None:
    """Add the client commands to the `trainyard` command."""
    jobs_app = typer.Typer(help="Training jobs.", no_args_is_help=True)
    models_app = typer.Typer(help="The model registry.", no_args_is_help=True)
    datasets_app = typer.Typer(help="Uploaded datasets.", no_args_is_help=True)
    app.add_typer(jobs_app, name="jobs")
    app.add_typer(models_app, name="models")
    app.add_typer(datasets_app, name="datasets")

    @app.command()
    def submit(spec: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="a job spec (JSON)")],
               follow_job: Annotated[bool, typer.Option("--follow", "-f", help="show live progress until it ends")] = False,
               url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
        """Submit a job spec; with --follow, exit non-zero unless it succeeds."""
        try:
            body = json.loads(spec.read_text())
        except ValueError as exc:
            err.print(f"[red]{spec} is not JSON:[/red] {exc}")
            raise typer.Exit(1) from None
        with client(url, token) as api:
            job = checked(api.post("/v1/jobs", json=body))
            console.print(f"job {job['id']} {job['status']}")
            if job.get("waiting_reason"):
                err.print(f"[yellow]warning: {WAITING.get(job['waiting_reason'], job['waiting_reason'])}[/yellow]")
            if follow_job and follow(api, job["id"]) != "succeeded":
                raise typer.Exit(1)

    @jobs_app.command("list")
    def jobs_list(status: Annotated[str | None, typer.Option(help="only jobs in this state")] = None,
                  limit: int = 20, url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
        """The newest jobs."""
        params = {"limit": limit, **({"status": status} if status else {})}
        with client(url, token) as api:
            page = checked(api.get("/v1/jobs", params=params))
        table = Table("id", "name", "status", "reason", "epoch", "test acc", "test loss", "created")
        for job in page["data"]:
            latest = job["latest_metrics"] or {}
            table.add_row(job["id"], job["name"] or "", job["status"], job["reason"] or "",
                          f"{job['epoch']}/{job['epochs']}", _fmt(latest.get("test_acc"), 3),
                          _fmt(latest.get("test_loss")), job["created_at"][:19])
        console.print(table)
        console.print(f"{page['count']} job(s)")

    @jobs_app.command("show")
    def jobs_show(job_id: str, url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
        """One job, as JSON."""
        with client(url, token) as api:
            console.print_json(data=checked(api.get(f"/v1/jobs/{job_id}")))

    @jobs_app.command("cancel")
    def jobs_cancel(job_id: str, url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
        """Cancel a queued or running job."""
        with client(url, token) as api:
            console.print(f"job {job_id} {checked(api.post(f'/v1/jobs/{job_id}/cancel'))['status']}")

    @jobs_app.command("delete")
    def jobs_delete(job_id: str, url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
        """Delete a finished job with its metrics and checkpoints (registered versions stay)."""
        with client(url, token) as api:
            checked(api.delete(f"/v1/jobs/{job_id}"))
            console.print(f"job {job_id} deleted")

    @jobs_app.command("resume")
    def jobs_resume(job_id: str, follow_job: Annotated[bool, typer.Option("--follow", "-f")] = False,
                    url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
        """Resume a cancelled or failed job from where it stopped."""
        with client(url, token) as api:
            console.print(f"job {job_id} {checked(api.post(f'/v1/jobs/{job_id}/resume'))['status']}")
            if follow_job and follow(api, job_id) != "succeeded":
                raise typer.Exit(1)

    @app.command()
    def metrics(job_id: str, url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
        """A job's per-epoch metrics as a table."""
        with client(url, token) as api:
            rows = checked(api.get(f"/v1/jobs/{job_id}/metrics"))["epochs"]
        table = Table("epoch", "train loss", "train acc", "val loss", "val acc", "test loss", "test acc", "samples/s")
        for r in rows:
            table.add_row(str(r["epoch"]), _fmt(r["train_loss"]), _fmt(r["train_acc"], 3), _fmt(r["val_loss"]),
                          _fmt(r["val_acc"], 3), _fmt(r["test_loss"]), _fmt(r["test_acc"], 3),
                          _fmt(r["samples_per_second"], 0))
        console.print(table)

    @models_app.command("register")
    def models_register(name: str, job_id: str, checkpoint: str = "best",
                        url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
        """Register a job's checkpoint (best, last or an epoch) as the next version of NAME."""
        which = int(checkpoint) if checkpoint.isdigit() else checkpoint
        with client(url, token) as api:
            version = checked(api.post("/v1/models", json={"name": name, "job_id": job_id, "checkpoint": which}))
        console.print(f"{version['name']} version {version['version']} (job {version['job_id']}, epoch {version['epoch']})")

    @models_app.command("export")
    def models_export(reference: str, output: Annotated[Path, typer.Option("--output", "-o", help="where to write it")],
                      fmt: Annotated[str, typer.Option("--format", help="safetensors, torchscript or onnx")] = "safetensors",
                      url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
        """Download a model (name, name:VERSION, name@ALIAS or job:ID[:EPOCH]) as a file."""
        with client(url, token) as api:
            answer = api.get(f"/v1/models/{reference}/export", params={"format": fmt}, timeout=300)
            if answer.status_code != 200:
                checked(answer)
        output.write_bytes(answer.content)
        console.print(f"{output} ({len(answer.content):,} bytes, {fmt})")

    @models_app.command("import")
    def models_import(weights: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="a safetensors state_dict")],
                      name: Annotated[str, typer.Option(help="the model to add a version to")],
                      model: Annotated[str, typer.Option(help='the architecture as JSON, e.g. \'{"arch": "lenet"}\'')],
                      classes: Annotated[str | None, typer.Option(help="class names, comma-separated")] = None,
                      input_shape: Annotated[str, typer.Option(help="e.g. 1,28,28")] = "1,28,28",
                      url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
        """Register weights trained elsewhere as the next version of a model."""
        form = {"name": name, "model": model,
                "input_shape": json.dumps([int(d) for d in input_shape.split(",")])}
        if classes:
            form["classes"] = json.dumps(classes.split(","))
        with client(url, token) as api:
            version = checked(api.post("/v1/models/import", data=form, timeout=300,
                                       files={"file": (weights.name, weights.read_bytes(), "application/octet-stream")}))
        console.print(f"{version['name']} version {version['version']} (imported)")

    @models_app.command("list")
    def models_list(url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
        """Registered models, their latest versions and aliases."""
        with client(url, token) as api:
            models = checked(api.get("/v1/models"))["data"]
        table = Table("name", "latest", "versions", "aliases")
        for m in models:
            table.add_row(m["name"], str(m["latest_version"]), str(len(m["versions"])),
                          ", ".join(f"{a}={v}" for a, v in m["aliases"].items()))
        console.print(table)

    @models_app.command("alias")
    def models_alias(name: str, alias: str, version: int, url: UrlOption = DEFAULT_URL,
                     token: TokenOption = None) -> None:
        """Point NAME@ALIAS at VERSION."""
        with client(url, token) as api:
            checked(api.put(f"/v1/models/{name}/aliases/{alias}", json={"version": version}))
        console.print(f"{name}@{alias} -> version {version}")

    @app.command()
    def workers(url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
        """Live training workers: queues, devices and what each is running."""
        with client(url, token) as api:
            live = checked(api.get("/v1/workers"))["workers"]
        table = Table("worker", "host", "pid", "queues", "devices", "job", "last seen")
        for w in live:
            table.add_row(w["id"], w["host"], str(w["pid"]), ", ".join(w["queues"]),
                          ", ".join(d["name"] for d in w["devices"]), w["current_job"] or "idle", w["last_seen"][11:19])
        console.print(table)
        console.print(f"{len(live)} live worker(s)")

    @app.command()
    def predict(model: str, files: Annotated[list[Path], typer.Argument(exists=True, dir_okay=False)],
                top_k: int = 1, url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
        """Classify image files with MODEL (name, name:VERSION, name@ALIAS or job:ID)."""
        with client(url, token) as api:
            uploads = [("files", (f.name, f.read_bytes(), "application/octet-stream")) for f in files]
            answer = checked(api.post("/v1/predict", data={"model": model, "top_k": str(top_k)}, files=uploads))
        table = Table("file", "label", "probability", "top k")
        for p in answer["predictions"]:
            table.add_row(p["filename"], p["label"], f"{p['probability']:.3f}",
                          ", ".join(f"{t['label']} {t['probability']:.2f}" for t in p["top_k"]))
        console.print(table)

    @datasets_app.command("upload")
    def datasets_upload(archive: Annotated[Path, typer.Argument(exists=True, dir_okay=False)],
                        name: str | None = None, test_fraction: float = 0.2, image_size: int | None = None,
                        url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
        """Upload a dataset zip; specs then use it as uploaded:<id>."""
        form = {"test_fraction": str(test_fraction), **({"name": name} if name else {}),
                **({"image_size": str(image_size)} if image_size else {})}
        with client(url, token) as api:
            dataset = checked(api.post("/v1/datasets", data=form,
                                       files={"file": (archive.name, archive.read_bytes(), "application/zip")}))
        console.print(f"uploaded:{dataset['id']}  {dataset['kind']}, {dataset['task']}, "
                      f"{dataset['num_train']} train / {dataset['num_test']} test, classes {dataset['classes']}")

    @datasets_app.command("list")
    def datasets_list(url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
        """Uploaded datasets."""
        with client(url, token) as api:
            data = checked(api.get("/v1/datasets"))["data"]
        table = Table("id", "name", "kind", "task", "train", "test", "classes")
        for d in data:
            table.add_row(d["id"], d["name"], d["kind"], d["task"], str(d["num_train"]), str(d["num_test"]),
                          ", ".join(d["classes"] or []))
        console.print(table)
