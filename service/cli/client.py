"""The client half of the `trainyard` command: it talks to the REST API, local or remote.

Scripts can rely on it: `--json` prints the API's own JSON on stdout, errors are one line on
stderr, and the exit status says what happened (EXIT_CODES, also in docs/cli.md).

How it is built, top to bottom: where the service is and how its answers are checked; the options
every command shares (`Options`, added to each command by `command`) and the one renderer
(`Options.show`: the API's JSON with --json, else tables and lines); following a job's events; the
tables; then one typer app per noun (jobs, sweeps, workers, models, datasets), each beside the
top-level commands about that noun (`submit`, `logs`, `metrics`, `evaluate`, `predict`, ...).
"""

from __future__ import annotations

import inspect
import json
import os
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import httpx
import typer
from httpx_sse import EventSource, SSEError, connect_sse
from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column, Table
from rich.text import Text

from models.inference.formats import FORMAT_OF_SUFFIX, FORMATS, SUFFIXES
from service.core.idempotency import checked_idempotency_key

# Piped or redirected, tables keep their natural width instead of being cut to 80 columns.
# No console markup: names, labels, file names and errors are the users' text, shown as given
# ("sweep [lr=0.1]" stays whole); styles are given as Text's.
console = Console(width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 250, markup=False)
err = Console(stderr=True, soft_wrap=True, markup=False)  # messages, one line each, whole when piped or grepped

OK, JOB_FAILED, USAGE, UNREACHABLE, REFUSED, SERVICE_FAILED = 0, 1, 2, 3, 4, 5
EXIT_CODES = {
    OK: "success",
    JOB_FAILED: "the job failed or was cancelled",
    USAGE: "usage: bad arguments, or a request the service rejected as invalid (e.g. 404, 409, 422)",
    UNREACHABLE: "the service cannot be reached, or answered that it is unavailable (502, 503, 504)",
    REFUSED: "refused by authentication (401, 403): a missing, wrong or read-only token",
    SERVICE_FAILED: "the service failed to answer (500): the message says why, its log says more",
}
RECONNECTS = 30  # an event stream that drops is resumed this many times before giving up


# Where the service is, and what its answers mean.


def service_url(environ=os.environ) -> str:
    """Where the service is, found as the service is configured: TRAINYARD_URL, else
    http://TRAINYARD_HOST:TRAINYARD_PORT (an address of every interface, 0.0.0.0 or ::, dialled on
    127.0.0.1), else http://127.0.0.1:8000."""
    if environ.get("TRAINYARD_URL"):
        return environ["TRAINYARD_URL"]
    host = environ.get("TRAINYARD_HOST", "").strip().strip("[]") or "127.0.0.1"
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    port = environ.get("TRAINYARD_PORT", "").strip() or "8000"
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


class Failure(Exception):
    """A one-line error for the user, and the exit status that goes with it."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def client(url: str, token: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=url, headers=headers, timeout=60)


def exit_code_for(status: int) -> int:
    if status in (401, 403):
        return REFUSED
    if status in (502, 503, 504):
        return UNREACHABLE
    return USAGE if 400 <= status < 500 else SERVICE_FAILED


def _place(loc: list, said_as: dict[str, str]) -> str:
    """Where a 422 puts a problem, in the command's words: a query parameter is the option (or
    argument, by `said_as`) that sent it, not `query.max_values`."""
    if len(loc) == 2 and loc[0] == "query":
        return said_as.get(str(loc[1]), "--" + str(loc[1]).replace("_", "-"))
    return ".".join(str(p) for p in loc)


def checked(response: httpx.Response, said_as: dict[str, str] | None = None) -> dict:
    """The JSON body, or a Failure that says what the service answered. `said_as` names the
    argument a query parameter came from where it is not the option of the same name."""
    if response.is_success:
        return response.json() if response.content else {}
    detail = _detail(response)
    if isinstance(detail, list):
        detail = "; ".join(f"{_place(e.get('loc', []), said_as or {})}: {e.get('msg')}" for e in detail)
    hint = "; give a token with --token or TRAINYARD_TOKEN" if response.status_code == 401 else ""
    raise Failure(f"{response.status_code} {detail}{hint}", exit_code_for(response.status_code))


def _detail(response: httpx.Response):
    """What a refusal says: its JSON `detail` (a message, or a list of located ones), else its text."""
    try:
        return response.json().get("detail", response.text)
    except (ValueError, AttributeError):  # not JSON, or JSON that is not an object
        return response.text


# A submission may have reached the service when its answer is lost; with the same Idempotency-Key
# the service answers a retry with what the first made, so these are retried. A first try that
# cannot connect is not: the service is not there (and says so at once); a later one is, since a
# service restarting refuses connections for a moment after its 502s and 503s.
RESUBMIT_AFTER = (httpx.ReadError, httpx.ReadTimeout, httpx.WriteError, httpx.RemoteProtocolError)
RESUBMIT_STATUSES = (502, 503, 504)
RESUBMIT_WAITS = (1.0, 2.0, 4.0)


def _idempotency_key(key: str | None) -> str | None:
    """A key a script gives must be one: an empty one (an unset variable) would silently submit again."""
    try:
        return None if key is None else checked_idempotency_key(key)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


IdempotencyKeyOption = Annotated[
    str | None,
    typer.Option(
        "--idempotency-key",
        callback=_idempotency_key,
        help="the same key sent again answers what it first made instead of making another (a script's "
        "rerun); default: a new key, with which this command retries a submission whose answer was lost",
    ),
]


def submit_once(api: httpx.Client, path: str, body, *, key: str | None) -> dict:
    """POST a submission under an Idempotency-Key, retried while its answer is lost or the service
    is briefly unavailable: it makes one thing however often it is sent. A given key that made
    something before is said on stderr (the answer is what it made then)."""
    headers = {"Idempotency-Key": key or f"cli-{uuid.uuid4()}"}
    for attempt, wait in enumerate(RESUBMIT_WAITS):
        try:
            answer = api.post(path, json=body, headers=headers)
        except httpx.TransportError as exc:
            if attempt == 0 and not isinstance(exc, RESUBMIT_AFTER):
                raise
            answer = None
        if answer is not None and answer.status_code not in RESUBMIT_STATUSES:
            break
        time.sleep(wait)
    else:
        answer = api.post(path, json=body, headers=headers)  # the last try: what it meets is the answer
    made = checked(answer)
    if key is not None and answer.headers.get("idempotent-replayed") == "true":
        said = f"note: submitted before under idempotency key {key!r}: this is what it made then, not a new one"
        err.print(said, highlight=False)
    return made


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise Failure(f"{path} is not JSON: {exc}", USAGE) from None


# The options every command shares, and the one renderer.


def _given(ctx: typer.Context, param: typer.CallbackParam, value) -> tuple[Any, str]:
    """A shared option's value and where it came from: "after" the command, "before" it
    (`trainyard --url X jobs list`), else "environment" or "default"."""
    source = ctx.get_parameter_source(param.name)  # the enum of the click that typer vendors
    if source is not None and source.name == "COMMANDLINE":
        return value, "after"
    before = (ctx.find_root().obj or {}).get(param.name)
    if before is not None:
        return before, "before"
    return value, "environment" if source is not None and source.name == "ENVIRONMENT" else "default"


def _before_command(ctx: typer.Context, param: typer.CallbackParam, value):
    return _given(ctx, param, value)[0]


def _url_or_default(ctx: typer.Context, param: typer.CallbackParam, value: str) -> str:
    """--url or TRAINYARD_URL as given; when neither is, service_url() (read when the command runs)."""
    url, source = _given(ctx, param, value)
    if source == "default":
        return service_url()
    return base_url(url)


def base_url(given: str) -> str:
    """A service's base URL as given, or a usage error saying what one looks like (typer's says
    whether it came from --url or from TRAINYARD_URL)."""
    url = given.strip()
    if not url.startswith(("http://", "https://")):
        raise typer.BadParameter(f"{given!r} is not a URL: give the service's base URL, such as http://{url}")
    if url.rstrip("/").endswith("/v1"):
        raise typer.BadParameter(f"{given!r} ends with /v1: give the service's base URL, {url.rstrip('/')[:-3]}")
    return url


UrlOption = Annotated[
    str,
    typer.Option(
        "--url",
        envvar="TRAINYARD_URL",
        callback=_url_or_default,
        show_default=False,
        help="the service's base URL (default: http://$TRAINYARD_HOST:$TRAINYARD_PORT as the service listens, "
        "else http://127.0.0.1:8000)",
    ),
]
TokenOption = Annotated[
    str | None, typer.Option("--token", envvar="TRAINYARD_TOKEN", callback=_before_command, help="an API token")
]
JsonOption = Annotated[bool, typer.Option("--json", help="print the API's JSON instead of tables or lines")]
FollowOption = Annotated[bool, typer.Option("--follow", "-f")]
ThresholdOption = Annotated[
    float | None,
    typer.Option(
        "--threshold", min=0, max=1, help="0 to 1: a top probability below it is answered 'not sure' (no label)"
    ),
]
DEFAULT_URL = "http://127.0.0.1:8000"


def emit_json(data) -> None:
    """Machine-readable output: the API's JSON, one document, on stdout."""
    print(json.dumps(data, indent=2))


@dataclass
class Options:
    """What every client command is given: where the service is, a token, and whether to print JSON."""

    url: str
    token: str | None
    as_json: bool = False

    def client(self) -> httpx.Client:
        return client(self.url, self.token)

    def call(self, method: str, path: str, **request) -> dict:
        """One request to the service; its JSON, or a Failure."""
        with self.client() as api:
            return checked(api.request(method, path, **request))

    def show(self, answer, view: Callable[[Any], Iterable] = lambda answer: ()) -> None:
        """The one renderer: the API's JSON with --json, else each table or line the view makes of it."""
        if self.as_json:
            emit_json(answer)
            return
        for shown in view(answer):
            console.print(shown)


_SHARED = [("as_json", JsonOption, False), ("url", UrlOption, DEFAULT_URL), ("token", TokenOption, None)]


def command(app: typer.Typer, name: str):
    """Add `f(opts: Options, ...)` to `app` as the command `name`: its own arguments and options,
    then --json, --url and --token, which arrive as `opts`."""

    def decorate(f: Callable) -> Callable:
        own = [p for p in inspect.signature(f, eval_str=True).parameters.values() if p.name != "opts"]
        shared = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, annotation=a, default=d) for n, a, d in _SHARED]

        def run(*args, url: str, token: str | None, as_json: bool = False, **kwargs):
            return f(Options(url, token, as_json), *args, **kwargs)

        run.__signature__ = inspect.Signature(own + shared)
        run.__name__, run.__doc__ = f.__name__, f.__doc__
        app.command(name)(run)
        return f

    return decorate


def _fmt(value, digits: int = 4) -> str:
    """A table's number: `digits` decimals, or as many significant digits where decimals would
    hide what it is (a diverged loss of 1.563e+11, a learning rate of 1e-09)."""
    if not isinstance(value, float):
        return "-" if value is None else str(value)
    if digits and (abs(value) >= 1e6 or 0 < abs(value) < 10**-digits):
        return f"{value:.{digits}g}"
    return f"{value:.{digits}f}"


def _share(value: float | None, digits: int, *, shortest: bool = False) -> str:
    """A probability or threshold with `digits` decimals (`shortest`: without trailing zeros, as
    a threshold was given), or more where those would round it to 0 or 1 (a threshold of 0.9999999
    is not 1, and a probability just under it is "not sure"), or as 6.1e-25 and 1 - 3.0e-13 where
    8 decimals would still round it so."""
    if value is None:
        return "-"
    shown = f"{value:.{digits}f}"
    while 0 < value < 1 and float(shown) in (0.0, 1.0) and digits < 8:
        digits += 1
        shown = f"{value:.{digits}f}"
    if 0 < value < 1 and float(shown) == 0.0:
        return f"{value:.1e}"
    if 0 < value < 1 and float(shown) == 1.0:
        return f"1 - {1 - value:.1e}"
    return shown.rstrip("0").rstrip(".") if shortest and "." in shown else shown


SHORT_ID = 8  # characters of an id that tables show; the API takes back any unique prefix of 6 or more


def id_column(header: str) -> Column:
    """A table column of short ids, never cut shorter than the API takes back."""
    return Column(header, min_width=SHORT_ID, no_wrap=True)


# Following a job.


def stream_events(source: EventSource) -> Iterator[tuple[str, Any, str]]:
    """The events of a server-sent event stream as (kind, data decoded from JSON, id). A keep-alive
    comment is not an event, and neither is a blank line after one: httpx-sse dispatches those as
    data-less `message` events (it keeps the last id), which carry nothing to decode."""
    for event in source.iter_sse():
        if event.data:
            yield event.event, event.json(), event.id


def events(api: httpx.Client, job_id: str, *, logs: bool = False):
    """The job's events as (kind, data), until `end`; a dropped stream is resumed from the last
    event's id, so no event is lost or seen twice."""
    last_id, failures = None, 0
    while True:
        headers = {"Last-Event-ID": last_id} if last_id else {}
        try:
            with connect_sse(
                api,
                "GET",
                f"/v1/jobs/{job_id}/events",
                params={"logs": str(logs).lower()},
                headers=headers,
                timeout=httpx.Timeout(60, read=None),
            ) as source:
                if not source.response.is_success:
                    source.response.read()
                    checked(source.response)
                for kind, data, event_id in stream_events(source):
                    failures = 0
                    last_id = event_id or last_id
                    yield kind, data
                    if kind == "end":
                        return
        except (httpx.TransportError, SSEError) as exc:
            failures += 1
            if failures > RECONNECTS:
                raise Failure(f"lost the event stream of job {job_id}: {exc}", UNREACHABLE) from None
            time.sleep(min(0.2 * 2**failures, 5))


def wait(api: httpx.Client, job_id: str) -> dict:
    """Block until the job ends; its final state."""
    for _ in events(api, job_id):
        pass
    return checked(api.get(f"/v1/jobs/{job_id}"))


def progress_columns() -> list:
    """The --follow line: name, bar, epochs done, status, the last epoch's metrics and the time; it
    fits 80 columns with the metrics whole (a name longer than 14 characters is cut short)."""

    def column(**options) -> Column:
        return Column(no_wrap=True, **options)

    return [
        TextColumn(
            "{task.fields[name]}", style="bold", markup=False, table_column=column(max_width=14, overflow="ellipsis")
        ),
        BarColumn(bar_width=8, table_column=column()),
        TextColumn("{task.completed}/{task.total}", table_column=column()),
        TextColumn("{task.fields[status]}", table_column=column()),
        TextColumn("{task.fields[metrics]}", table_column=column()),
        TimeElapsedColumn(table_column=column()),
    ]


def epoch_summary(data: dict) -> str:
    """An epoch's metrics in short, each named: the training loss, then the test accuracy of a
    classifier or the test loss of a regression (every metric: `trainyard metrics`)."""

    def short(value) -> str:
        return "-" if value is None else f"{value:.3g}"

    text = f"train loss {short(data['train_loss'])}, "
    if data["test_acc"] is not None:
        return text + f"test acc {data['test_acc']:.3f}"
    return text + f"test loss {short(data['test_loss'])}"


def follow(api: httpx.Client, job_id: str) -> dict:
    """Show a live progress bar from the job's event stream; returns the job as it ended. Reasons
    are printed on lines of their own (waiting, and the end), not on the bar."""
    job = checked(api.get(f"/v1/jobs/{job_id}"))
    with Progress(*progress_columns(), console=console, transient=False) as progress:
        task = progress.add_task(
            "train", total=job["epochs"], name=job["name"] or job_id[:8], status=job["status"], metrics=""
        )
        for kind, data in events(api, job_id):
            if kind == "status":
                progress.update(task, status=data["to_status"])
            elif kind == "waiting":  # a queued job that cannot start, or a running one whose worker waits
                if data["reason"]:
                    err.print(f"job {job_id} is waiting: {data.get('detail') or data['reason']}", style="yellow")
            elif kind == "epoch":
                progress.update(task, completed=data["epoch"], metrics=epoch_summary(data))
    job = checked(api.get(f"/v1/jobs/{job_id}"))
    if job["status"] != "succeeded":
        err.print(
            Text.assemble(
                (f"job {job_id} {job['status']}", "red"), f": {job['reason'] or ''} {job['error'] or ''}".rstrip()
            )
        )
    else:
        console.print(
            Text.assemble((f"job {job_id} succeeded", "green"), f" ({job['reason']})" if job["reason"] else "")
        )
        best = job.get("best_metrics") or {}
        if best.get("epoch") not in (None, job["epoch"]):  # the bar showed the last epoch, not the one served
            console.print(
                f"job:{job_id[:SHORT_ID]} serves epoch {best['epoch']}, its best by {job['best_selected_on']}: "
                + epoch_summary(best)
            )
    return job


def warn(answer: dict, *, as_json: bool) -> None:
    """The answer's warnings on stderr (with --json they are in the JSON)."""
    if not as_json:
        for warning in answer.get("warnings") or []:
            err.print(Text.assemble(("warning:", "yellow"), f" {warning}"), highlight=False)


def finish(api: httpx.Client, job: dict, *, follow_job: bool, as_json: bool) -> None:
    """After submit or resume: print the job, and with --follow wait for its end (exit 1 unless
    it succeeds)."""
    warn(job, as_json=as_json)
    if not follow_job:
        if as_json:
            emit_json(job)
        else:
            console.print(f"job {job['id']} {job['status']}")
        return
    if as_json:
        job = wait(api, job["id"])
        emit_json(job)
    else:
        console.print(f"job {job['id']} {job['status']}")
        job = follow(api, job["id"])
    if job["status"] != "succeeded":
        raise typer.Exit(JOB_FAILED)


def bare_job_id(value: str) -> str:
    """A job's id as the routes take it, also when given as a reference names it (job:ID); a
    reference to one of its epochs (job:ID:last) is not a job."""
    bare = value.removeprefix("job:")
    if not bare or ":" in bare:
        raise typer.BadParameter(f"{value!r}: give a job's id or a unique prefix of it (job:ID), without an epoch")
    return bare


JobId = Annotated[
    str, typer.Argument(metavar="JOB", help="its id or a unique prefix of it (or job:ID)", callback=bare_job_id)
]

# The top-level commands, and one app per noun; `register` adds them all to `trainyard`.

top = typer.Typer()
jobs_app = typer.Typer(help="Training jobs.", no_args_is_help=True)
models_app = typer.Typer(help="The model registry.", no_args_is_help=True)
datasets_app = typer.Typer(help="Uploaded datasets.", no_args_is_help=True)
sweeps_app = typer.Typer(help="Sweeps: their trials, ranked.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add the client commands to the `trainyard` command."""
    app.add_typer(top)  # no name: its commands sit at the top level (submit, sweep, logs, ...)
    app.add_typer(jobs_app, name="jobs")
    app.add_typer(models_app, name="models")
    app.add_typer(datasets_app, name="datasets")
    app.add_typer(sweeps_app, name="sweeps")


@command(top, "submit")
def submit(
    opts: Options,
    spec: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="a job spec (JSON)")],
    follow_job: Annotated[bool, typer.Option("--follow", "-f", help="wait until it ends, showing progress")] = False,
    idempotency_key: IdempotencyKeyOption = None,
) -> None:
    """Submit a job spec; with --follow, exit 1 unless it succeeds."""
    body = read_json(spec)
    if isinstance(body, dict) and "base" in body and "model" not in body:
        raise Failure(
            f"{spec} is a sweep (a base spec and the values it varies): send it with trainyard sweep {spec}", USAGE
        )
    with opts.client() as api:
        job = submit_once(api, "/v1/jobs", body, key=idempotency_key)
        if job.get("waiting_reason"):
            err.print(f"warning: {job.get('waiting_detail') or job['waiting_reason']}", style="yellow")
        finish(api, job, follow_job=follow_job, as_json=opts.as_json)


# Sweeps.

SWEEP_POLL_SECONDS = 1.0
SWEEP_FINAL = ("succeeded", "failed", "cancelled")
JOB_FINAL = ("succeeded", "failed", "cancelled", "pruned")  # JobStatus.FINAL (the CLI imports no SQL)


def sweep_updates(api: httpx.Client, sweep: dict):
    """The sweep as it is every SWEEP_POLL_SECONDS, until it ends."""
    while sweep["status"] not in SWEEP_FINAL:
        time.sleep(SWEEP_POLL_SECONDS)
        sweep = checked(api.get(f"/v1/sweeps/{sweep['id']}"))
        yield sweep


def sweep_table(sweep: dict) -> Table:
    """A sweep's trials, best first, as a table: a pruned trial shows the epochs it ran."""
    paths = next((list(entry["params"]) for entry in sweep["jobs"] if entry["params"]), [])
    search = sweep["search"] + (f" + {sweep['pruner']} pruner" if sweep.get("pruner") else "")
    table = Table(
        "rank",
        "trial",  # as the API and a stopped sweep's reason number them
        id_column("job"),
        "status",
        "epochs",
        *paths,
        sweep["metric"],
        title=f"sweep {sweep['name']} ({sweep['id']}): {sweep['status']}, {search}, "
        f"{sweep['launched']}/{sweep['trials']} launched, {sweep['epochs_spent']} epochs spent, "
        f"ranked by {sweep['mode']} {sweep['metric']}",
    )
    for rank, entry in enumerate(sweep["jobs"], start=1):
        values = [entry["params"].get(path, "-") for path in paths]
        table.add_row(
            str(rank),
            str(entry["trial"]),
            (entry["job_id"] or "-")[:SHORT_ID],
            entry["status"]
            + (f" ({entry['reason']})" if entry.get("reason") and entry["status"] in ("failed", "cancelled") else ""),
            str(entry["epochs"]),
            *(_fmt(v) if isinstance(v, float) else str(v) for v in values),
            _fmt(entry["metric"]),
        )
    return table


def follow_sweep_live(opts: Options, api: httpx.Client, current: dict) -> dict:
    """The sweep as it changes (a live table, or nothing until the end with --json), until it ends."""
    if opts.as_json:
        for update in sweep_updates(api, current):
            current = update
        return current
    with Live(sweep_table(current), console=console, refresh_per_second=4) as live:
        for update in sweep_updates(api, current):
            current = update
            live.update(sweep_table(current))
    if not console.is_terminal:  # piped, Live leaves its last table without an end of line
        console.line()
    return current


def shown_sweep(opts: Options, api: httpx.Client, current: dict, follow_sweep: bool, unfollowed: Callable) -> None:
    """The sweep as `unfollowed` shows it; or with --follow, live until it ends, then its notes (exit 1
    unless every trial succeeded or was pruned)."""
    if follow_sweep:
        current = follow_sweep_live(opts, api, current)
    opts.show(current, sweep_notes if follow_sweep else unfollowed)
    if follow_sweep and current["status"] != "succeeded":
        raise typer.Exit(JOB_FAILED)


@command(top, "sweep")
def sweep(
    opts: Options,
    spec: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="a sweep request (JSON)")],
    follow_sweep: Annotated[bool, typer.Option("--follow", "-f", help="a live table until it ends")] = False,
    idempotency_key: IdempotencyKeyOption = None,
) -> None:
    """Submit a sweep (a base spec and a grid or random draws); with --follow, exit 1 unless every
    job succeeds."""
    body = read_json(spec)
    if isinstance(body, dict) and "model" in body and "base" not in body:
        raise Failure(
            f"{spec} is a job spec: send it with trainyard submit {spec}, or make it a sweep's base "
            '({"base": {...}, "grid": {"optimizer.lr": [0.01, 0.1]}})',
            USAGE,
        )
    with opts.client() as api:
        current = submit_once(api, "/v1/sweeps", body, key=idempotency_key)
        warn(current, as_json=opts.as_json)
        shown_sweep(
            opts, api, current, follow_sweep, lambda s: [f"sweep {s['id']} {s['status']}: {s['trials']} trials"]
        )


@command(sweeps_app, "list")
def sweeps_list(opts: Options, limit: int = 20) -> None:
    """The newest sweeps."""
    page = opts.call("GET", "/v1/sweeps", params={"limit": limit})

    def table(answer: dict) -> list:
        shown = Table(id_column("id"), "name", "status", "search", "trials", "epochs spent", "best", "created")
        for s in answer["data"]:
            search = s["search"] + (f" + {s['pruner']}" if s["pruner"] else "")
            best = f"{s['metric']} {_fmt((s['best'] or {}).get('metric'))}"
            shown.add_row(
                s["id"][:SHORT_ID],
                s["name"],
                s["status"],
                search,
                f"{s['launched']}/{s['trials']}",
                str(s["epochs_spent"]),
                best,
                s["created_at"][:19],
            )
        return [shown]

    opts.show(page, table)


@command(sweeps_app, "show")
def sweeps_show(
    opts: Options,
    sweep_id: str,
    follow_sweep: Annotated[bool, typer.Option("--follow", "-f", help="a live table until it ends")] = False,
) -> None:
    """One sweep's trials, best first (pruned ones with the epochs they ran); with --follow, live
    until it ends, then exit 1 unless every trial succeeded or was pruned."""
    with opts.client() as api:
        current = checked(api.get(f"/v1/sweeps/{sweep_id}"))
        shown_sweep(opts, api, current, follow_sweep, lambda s: [sweep_table(s), *sweep_notes(s)])


def sweep_notes(sweep: dict, most: int = 5) -> list[str]:
    """Below its table: why it stopped, if it did, and why its trials failed or were invalid, a
    line each (trials failing alike once; not again what the stop says)."""
    stopped = sweep.get("stopped")
    said: dict[tuple, list[str]] = {}
    for entry in sorted(sweep["jobs"], key=lambda e: e["trial"]):
        if entry.get("error") and not (stopped and f"({entry.get('reason')}: {entry['error']})" in stopped):
            said.setdefault((entry["status"], entry["error"]), []).append(str(entry["trial"]))
    lines = [
        f"trial{'s' if len(trials) > 1 else ''} {', '.join(trials)} {status}: {error}"
        for (status, error), trials in said.items()
    ]
    more = [f"... and {len(lines) - most} more errors"] if len(lines) > most else []
    return ([f"stopped: {stopped}"] if stopped else []) + lines[:most] + more


@command(sweeps_app, "cancel")
def sweeps_cancel(opts: Options, sweep_id: str) -> None:
    """Launch no more trials, and cancel those running."""
    opts.show(opts.call("POST", f"/v1/sweeps/{sweep_id}/cancel"), lambda s: [f"sweep {s['id']} {s['status']}"])


@command(sweeps_app, "resume")
def sweeps_resume(
    opts: Options,
    sweep_id: str,
    follow_sweep: Annotated[bool, typer.Option("--follow", "-f", help="a live table until it ends")] = False,
) -> None:
    """Go on with a sweep that stopped, failed or was cancelled: its failed and cancelled trials run
    again from their last epochs, and those refused at launch for their dataset, then those it never
    launched."""
    with opts.client() as api:
        current = checked(api.post(f"/v1/sweeps/{sweep_id}/resume"))
        shown_sweep(opts, api, current, follow_sweep, lambda s: [f"sweep {s['id']} {s['status']}"])


# Jobs.


def jobs_table(page: dict) -> list:
    """Jobs with the metrics of the epoch that `job:<id>` serves (its best), not of the last epoch."""
    table = Table(id_column("id"), "name", "status", "reason", "epoch", "best", "test acc", "test loss", "created")
    for job in page["data"]:
        best = job["best_metrics"] or {}
        table.add_row(
            job["id"][:SHORT_ID],
            job["name"] or "",
            job["status"],
            f"waiting: {job['waiting_reason']}" if job.get("waiting_reason") else job["reason"] or "",
            f"{job['epoch']}/{job['epochs']}",
            str(best.get("epoch", "-")),
            _fmt(best.get("test_acc"), 3),
            _fmt(best.get("test_loss")),
            job["created_at"][:19],
        )
    shown, count = len(page["data"]), page["count"]
    counted = f"{count} job(s)" if shown == count else f"the newest {shown} of {count} jobs (--limit for more)"
    return [table, f"{counted}; test acc and loss are of the best epoch, the one job:<id> serves"]


@command(jobs_app, "list")
def jobs_list(
    opts: Options,
    status: Annotated[
        list[str] | None, typer.Option(help="only jobs in this state (give it again for several)")
    ] = None,
    limit: int = 20,
) -> None:
    """The newest jobs."""
    opts.show(
        opts.call("GET", "/v1/jobs", params={"limit": limit, **({"status": status} if status else {})}), jobs_table
    )


def _reason_said(job: dict) -> str:
    """The reason of a job's status; a queued job's is why it went back to the queue, now past."""
    return f" (back in the queue after {job['reason']})" if job["status"] == "queued" else f" ({job['reason']})"


def job_lines(job: dict) -> list[str | Text]:
    """One job in a few lines: state, progress, the best epoch's metrics, and what needs acting on."""
    lines = [
        f"job {job['id']} {job['name'] or ''}".rstrip()
        + f": {job['status']}"
        + (_reason_said(job) if job["reason"] else ""),
        f"epoch {job['epoch']}/{job['epochs']}, attempt {job['attempt']}, created {job['created_at'][:19]}",
    ]
    best = job.get("best_metrics")
    if best:
        lines.append(
            f"best epoch {best['epoch']} ({_chosen(job['best_selected_on'])}, served as job:{job['id'][:SHORT_ID]}): "
            + epoch_summary(best)
        )
    lines += cross_validation_lines(job.get("cross_validation"))
    started = [t for t in job.get("transitions") or [] if t.get("to_status") == "running"]
    if job["status"] in ("running", "cancelling") and started and (started[-1].get("detail") or {}).get("worker"):
        detail = started[-1]["detail"]
        lines.append(f"running on {detail['worker']}" + (f" (pid {detail['pid']})" if detail.get("pid") else ""))
    ran = (job.get("environment") or {}).get("distributed")
    if ran:
        hosts = ", ".join(sorted({rank["host"] for rank in ran.get("ranks") or []})) or "unknown hosts"
        machines = ((job.get("spec") or {}).get("distributed") or {}).get("nnodes", 1)
        lines.append(
            f"distributed: {ran['world_size']} processes ({ran['backend']}, {ran['threads_per_process']} thread(s) "
            f"each) on {f'{machines} machines ({hosts})' if machines > 1 else hosts}"
        )
    if job.get("waiting_reason"):
        lines.append(f"waiting: {job.get('waiting_detail') or job['waiting_reason']}")
    lines += [Text.assemble(("warning:", "yellow"), f" {warning}") for warning in job.get("warnings") or []]
    if job["error"]:
        lines.append(Text.assemble(("error:", "red"), f" {job['error']}"))
    return lines


CV_METRICS = (
    ("train loss", "train_loss", 4),
    ("train acc", "train_acc", 3),
    ("val loss", "val_loss", 4),
    ("val acc", "val_acc", 3),
)


def cross_validation_lines(results: dict | None) -> list[str]:
    """A k-fold job's folds, each's final-epoch metrics, then their mean and standard deviation."""
    if not results:
        return []

    def said(values: dict, key: str, digits: int) -> str:
        return _fmt(values.get(key), digits)

    folds = results.get("folds") or []
    done = "" if results.get("complete") else f" ({len(folds)} done so far)"
    summary = results.get("summary") or {}
    over = ", ".join(
        f"{name} {_fmt(summary[key]['mean'], digits)} ± {_fmt(summary[key]['std'], digits)}"
        for name, key, digits in CV_METRICS
        if key in summary
    )
    lines = [f"cross-validation{done}: {over}"]
    for fold in folds:
        shown = ", ".join(
            f"{name} {said(fold, key, digits)}" for name, key, digits in CV_METRICS if fold.get(key) is not None
        )
        lines.append(f"  fold {fold['fold']}: {shown}")
    return lines


@command(jobs_app, "show")
def jobs_show(opts: Options, job_id: JobId) -> None:
    """One job: its state, progress, best epoch and warnings (--json: all of it)."""
    opts.show(opts.call("GET", f"/v1/jobs/{job_id}"), job_lines)


@command(jobs_app, "wait")
def jobs_wait(opts: Options, job_id: JobId) -> None:
    """Wait until a job ends; exit 1 unless it succeeded."""
    with opts.client() as api:
        job = wait(api, job_id)
    opts.show(job, lambda j: [f"job {job_id} {j['status']}" + (f" ({j['reason']})" if j["reason"] else "")])
    if job["status"] != "succeeded":
        raise typer.Exit(JOB_FAILED)


@command(jobs_app, "cancel")
def jobs_cancel(opts: Options, job_id: JobId) -> None:
    """Cancel a queued or running job."""
    opts.show(opts.call("POST", f"/v1/jobs/{job_id}/cancel"), lambda job: [f"job {job['id']} {job['status']}"])


@command(jobs_app, "delete")
def jobs_delete(opts: Options, job_id: JobId) -> None:
    """Delete a finished job with its metrics and checkpoints (registered versions stay)."""
    opts.call("DELETE", f"/v1/jobs/{job_id}")
    opts.show({"id": job_id, "deleted": True}, lambda answer: [f"job {job_id} deleted"])


@command(jobs_app, "resume")
def jobs_resume(opts: Options, job_id: JobId, follow_job: FollowOption = False) -> None:
    """Resume a cancelled or failed job from where it stopped; with --follow, exit 1 unless it succeeds."""
    with opts.client() as api:
        finish(api, checked(api.post(f"/v1/jobs/{job_id}/resume")), follow_job=follow_job, as_json=opts.as_json)


def _print_log(line: dict) -> None:
    print(f"{line['at'][11:19]} #{line['attempt']} {line['level']:<7} {line['message']}", flush=True)


@command(top, "logs")
def logs(
    opts: Options,
    job_id: JobId,
    follow_logs: Annotated[bool, typer.Option("--follow", "-f", help="keep printing until the job ends")] = False,
) -> None:
    """What the job's worker logged: progress, warnings and, if it failed, the traceback."""
    with opts.client() as api:
        if not follow_logs:
            lines, after = [], 0
            while True:
                page = checked(api.get(f"/v1/jobs/{job_id}/logs", params={"after": after}))
                lines += page["lines"]
                if not page["lines"]:
                    break
                after = page["next"]
            if opts.as_json:
                return emit_json({"job_id": job_id, "lines": lines})
            for line in lines:
                _print_log(line)
            return
        for kind, data in events(api, job_id, logs=True):
            if kind == "log":
                print(json.dumps(data), flush=True) if opts.as_json else _print_log(data)


METRIC_COLUMNS = (  # (header, field, decimals)
    ("train loss", "train_loss", 4),
    ("train acc", "train_acc", 3),
    ("val loss", "val_loss", 4),
    ("val acc", "val_acc", 3),
    ("test loss", "test_loss", 4),
    ("test acc", "test_acc", 3),
)


def metrics_table(answer: dict) -> list:
    """Each epoch's metrics, those no epoch has left out (a regression's accuracies, a job without
    a validation split's val columns); the epoch that `best` and job:<id> serve is marked."""
    shown = [column for column in METRIC_COLUMNS if any(r[column[1]] is not None for r in answer["epochs"])]
    table = Table("epoch", *(header for header, _, _ in shown), "samples/s", "best")
    for r in answer["epochs"]:
        best = r["epoch"] == answer.get("best_epoch")
        table.add_row(
            str(r["epoch"]),
            *(_fmt(r[field], digits) for _, field, digits in shown),
            _fmt(r["samples_per_second"], 0),
            "*" if best else "",
            style="bold" if best else None,
        )
    if not answer["epochs"]:
        return [answer.get("ended") or "no epoch has ended yet"]
    notes = (
        [f"best: epoch {answer['best_epoch']}, {_chosen(answer['best_selected_on'])}"]
        if answer.get("best_epoch")
        else []
    )
    return [table, *notes]


@command(top, "metrics")
def metrics(opts: Options, job_id: JobId) -> None:
    """A job's per-epoch metrics as a table."""
    answer = opts.call("GET", f"/v1/jobs/{job_id}/metrics")
    if not answer["epochs"] and not opts.as_json:  # whether one may still end
        job = opts.call("GET", f"/v1/jobs/{answer['job_id']}")
        if job["status"] in JOB_FINAL:  # an epoch may have ended between the two answers
            answer = opts.call("GET", f"/v1/jobs/{answer['job_id']}/metrics")
        if job["status"] in JOB_FINAL and not answer["epochs"]:
            reason = f" ({job['reason']})" if job.get("reason") else ""
            answer = {**answer, "ended": f"job {job['id'][:8]} {job['status']}{reason} before an epoch ended"}
    opts.show(answer, metrics_table)


@command(top, "plot")
def plot(
    opts: Options,
    job_ids: Annotated[
        list[str], typer.Argument(metavar="JOB", help="one job, or 2 to 8 to compare: ids, prefixes or job:ID")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="where to write the PNG")],
) -> None:
    """A job's learning curves, or several jobs' on one figure (labelled by what their specs differ
    in where their names are the same), as a PNG file."""
    ids = [bare_job_id(value) for value in job_ids]
    path, params = (f"/v1/jobs/{ids[0]}/plot.png", {}) if len(ids) == 1 else ("/v1/plots/compare.png", {"jobs": ids})
    with opts.client() as api:
        answer = api.get(path, params=params, timeout=120)
    if answer.status_code != 200:
        checked(answer, said_as={"jobs": "JOB"})
    try:
        output.write_bytes(answer.content)
    except OSError as exc:
        raise Failure(f"cannot write {output}: {exc.strerror or exc}", USAGE) from None
    size = len(answer.content)
    opts.show({"path": str(output), "bytes": size, "jobs": ids}, lambda written: [f"{output} ({size:,} bytes)"])


def _chosen(selected_on: str | None) -> str:
    """How a job's best epoch was chosen, in words: on a metric, or, without a validation split (or
    early stopping's metric), the last epoch."""
    return (
        "the last epoch: no validation split to choose on"
        if selected_on == "last_epoch"
        else f"chosen on {selected_on}"
    )


CONFUSION_SHOWN = 20  # classes a confusion matrix is shown for as a table


def evaluation_views(report: dict, url: str) -> list:
    """An evaluation report as a summary line and tables: classes, the confusion matrix,
    thresholds, mistakes."""
    model = report["model"]
    top_k = "".join(f" · top-{k} {_fmt(v)}" for k, v in report["top_k_accuracy"].items() if k != "1")
    summary = (
        f"{model['reference']} (epoch {model['epoch']}) on {report['num_test']} test examples: "
        f"accuracy {_fmt(report['accuracy'])}{top_k}"
    )
    classes = Table("class", "precision", "recall", "f1", "support", title="per class")
    for c in report["classes"]:
        classes.add_row(c["label"], _fmt(c["precision"]), _fmt(c["recall"]), _fmt(c["f1"]), str(c["support"]))
    classes.add_section()
    for name in ("macro_avg", "weighted_avg"):
        a = report[name]
        classes.add_row(
            name.replace("_", " "), _fmt(a["precision"]), _fmt(a["recall"]), _fmt(a["f1"]), str(a["support"])
        )
    labels = [c["label"] for c in report["classes"]]
    if len(labels) <= CONFUSION_SHOWN:
        confusion = Table("true \\ predicted", *labels, title="confusion matrix (rows: true class, columns: predicted)")
        for label, row in zip(labels, report["confusion_matrix"], strict=True):
            confusion.add_row(label, *(str(count) for count in row))
    else:
        confusion = f"confusion matrix: {len(labels)} classes, too many to show here (--json, or GET .../confusion)"
    thresholds = Table("threshold", "coverage", "accuracy", title="confidence thresholds")
    for t in report["thresholds"]:
        thresholds.add_row(f"{t['threshold']:.2f}", _fmt(t["coverage"], 3), _fmt(t["accuracy"], 3))
    mistakes = Table(
        "index", "true", "predicted", "probability", Column("image", overflow="fold"), title="most confident mistakes"
    )
    for m in report["mistakes"]:
        mistakes.add_row(
            str(m["index"]),
            m["true_label"],
            m["predicted_label"],
            _share(m["probability"], 3),
            url.rstrip("/") + m["image_url"] if m.get("image_url") else "-",  # none for numeric rows
        )
    none = "no mistakes: every test example is right"
    return [summary, classes, confusion, thresholds, mistakes if report["mistakes"] else none]


@command(top, "evaluate")
def evaluate(
    opts: Options,
    job_id: JobId,
    limit: Annotated[int | None, typer.Option(help="mistakes listed (the service's default: 24)")] = None,
) -> None:
    """How the checkpoint job:JOB names does on the job's test set: accuracy, each class's
    precision, recall and F1, the confusion matrix, confidence thresholds and the most confident
    mistakes."""
    report = opts.call(
        "GET", f"/v1/jobs/{job_id}/evaluation", params={} if limit is None else {"limit": limit}, timeout=300
    )
    opts.show(report, lambda r: evaluation_views(r, opts.url))


# Workers.


def workers_table(answer: dict) -> list:
    live = answer["workers"]
    table = Table("worker", "host", "pid", "queues", "devices", "processes", id_column("job"), "last seen")
    for w in live:
        table.add_row(
            w["id"],
            w["host"],
            str(w["pid"]),
            ", ".join(w["queues"]),
            ", ".join(d["name"] for d in w["devices"]),
            str(w["processes"]) if w.get("processes") else "-",  # for one distributed job on the CPU
            (w["current_job"] or "idle")[:SHORT_ID],
            w["last_seen"][11:19],
        )
    return [table, f"{len(live)} live worker(s)", *_stores_said(answer)]


def _stores_said(answer: dict) -> list[str]:
    """The API's store, and each worker's where it names another (a path is the same only on one machine)."""
    api = answer.get("store")
    if not api:
        return []
    others = [f"worker {w['id']} uses {w['store']}" for w in answer["workers"] if w.get("same_store") is False]
    problem = [f"warning: {answer['store_problem']}"] if answer.get("store_problem") else []
    return [f"store: {api}", *problem, *others]


@command(top, "workers")
def workers(opts: Options) -> None:
    """Live training workers: queues, devices and what each is running."""
    opts.show(opts.call("GET", "/v1/workers"), workers_table)


# Models: predict, and the registry.


def predictions_table(answer: dict) -> list:
    """Each file's or row's prediction: a label with its probability and top k, or a value."""
    predictions = answer["predictions"]
    if predictions and "value" in predictions[0] and predictions[0]["value"] is not None:  # a regression
        table = Table("row", "value")
        for number, p in enumerate(predictions, start=1):
            table.add_row(str(number), json.dumps(p["value"]) if isinstance(p["value"], list) else f"{p['value']:.6g}")
        return [table]
    table = Table("file" if predictions and "filename" in predictions[0] else "row", "label", "probability", "top k")
    for number, p in enumerate(predictions, start=1):
        table.add_row(
            p.get("filename") or str(number),
            "not sure" if p.get("below_threshold") else p["label"],
            _share(p["probability"], 3),
            ", ".join(f"{t['label']} {_share(t['probability'], 2)}" for t in p["top_k"]),
        )
    if answer.get("threshold") is None:
        return [table]
    return [
        table,
        f'threshold {_share(answer["threshold"], 2, shortest=True)}: a top probability below it is "not sure"',
    ]


def _row(text: str) -> list[float]:
    try:
        return [float(value) for value in text.split(",")]
    except ValueError:
        raise typer.BadParameter(
            f"{text!r}: give numbers separated by commas, e.g. 0.5,1.2,3", param_hint="--row"
        ) from None


@command(top, "predict")
def predict(
    opts: Options,
    model: str,
    files: Annotated[list[Path] | None, typer.Argument(exists=True, dir_okay=False, help="images to classify")] = None,
    row: Annotated[
        list[str] | None,
        typer.Option(help="a numeric model's input row, comma-separated (give it again for more rows)"),
    ] = None,
    top_k: int = 1,
    threshold: ThresholdOption = None,
) -> None:
    """Classify image files, or predict numeric rows (--row), with MODEL (name, name:VERSION,
    name@ALIAS or job:ID)."""
    if bool(files) == bool(row):
        raise typer.BadParameter("give image files, or --row for a model of numeric inputs", param_hint="FILES")
    if row:
        body = {"model": model, "inputs": [_row(r) for r in row], "top_k": top_k}
        opts.show(
            opts.call("POST", "/v1/predict", json={**body, **({} if threshold is None else {"threshold": threshold})}),
            predictions_table,
        )
        return
    form = {"model": model, "top_k": str(top_k), **({} if threshold is None else {"threshold": str(threshold)})}
    answer = predict_files(opts, form, files)
    if answer["predictions"]:
        opts.show(answer, predictions_table)
    elif opts.as_json:
        emit_json(answer)
    if answer.get("refused"):  # the other files are answered above
        if not opts.as_json:
            for refused in answer["refused"]:
                err.print(f"error: {refused['error']}", highlight=False)
        raise typer.Exit(USAGE)


PREDICT_FILES_PER_REQUEST = 64  # the service's default TRAINYARD_MAX_FILES_PER_REQUEST


def predict_files(opts: Options, form: dict, files: list[Path]) -> dict:
    """The answer to predicting every file, sent in as many requests as the service's limits ask:
    fewer files at a time when it names a lower count per request, half as many when a request is
    too large (413). Every request after the first names the version the first was answered by,
    which an alias or a job's best epoch could move from meanwhile. Predictions in the files' order;
    a file the service cannot read (it names it) or take (413 alone) is left out, its error under
    `refused`, and the others are sent again."""
    per_request, answers, refused, at = PREDICT_FILES_PER_REQUEST, [], [], 0
    files = list(zip(_upload_names(files), files, strict=True))
    with opts.client() as api:
        while at < len(files):
            chunk = files[at : at + per_request]
            uploads = [("files", (name, f.read_bytes(), "application/octet-stream")) for name, f in chunk]
            response = api.post("/v1/predict", data=form, files=uploads)
            lower = re.search(r"at most (\d+) per request", response.text) if response.status_code == 422 else None
            if lower and 0 < int(lower[1]) < per_request:
                per_request = int(lower[1])
                continue
            if response.status_code == 413 and per_request > 1:
                per_request = max(1, len(chunk) // 2)
                continue
            bad = 0 if response.status_code == 413 else _unreadable(response, [name for name, _ in chunk])
            if response.status_code in (413, 422) and bad is not None:
                refused.append({"filename": chunk[bad][0], "error": _said(response, chunk[bad][0])})
                del files[at + bad]
                continue
            answers.append(checked(response))
            form = {**form, "model": _answered_by(answers[0]["model"], form["model"])}
            at += len(chunk)
    answer = {**answers[0], "predictions": [p for a in answers for p in a["predictions"]]} if answers else {}
    return {**answer, "predictions": answer.get("predictions", []), **({"refused": refused} if refused else {})}


def _upload_names(files: list[Path]) -> list[str]:
    """The name each file is sent and shown by: its own, or where two share one (cat/1.png and
    dog/1.png) its path as given, and a number where a path is given twice."""
    names = [f.name for f in files]
    names = [str(f) if names.count(f.name) > 1 else f.name for f in files]
    return [f"{name} #{names[:i].count(name) + 1}" if names.count(name) > 1 else name for i, name in enumerate(names)]


def _unreadable(response: httpx.Response, names: list[str]) -> int | None:
    """Which file a 422 says cannot be read ("NAME: not a recognised image ...")."""
    detail = _detail(response)
    named = [i for i, name in enumerate(names) if isinstance(detail, str) and detail.startswith(f"{name}: ")]
    return named[0] if len(named) == 1 else None


def _said(response: httpx.Response, name: str) -> str:
    """A refusal of one file, in words that name it."""
    detail = str(_detail(response))
    return detail if detail.startswith(f"{name}: ") else f"{name}: {response.status_code} {detail}"


def _answered_by(model: dict, given: str) -> str:
    """The reference that names the version an answer came from: name:VERSION, job:ID:EPOCH."""
    if model.get("name") and model.get("version"):
        return f"{model['name']}:{model['version']}"
    if model.get("job_id") and model.get("epoch"):
        return f"job:{model['job_id']}:{model['epoch']}"
    return given


def _version_line(suffix: Callable[[dict], str]) -> Callable[[dict], list[str]]:
    return lambda version: [f"{version['name']} version {version['version']} ({suffix(version)})"]


@command(models_app, "register")
def models_register(
    opts: Options, name: str, job_id: JobId, checkpoint: str = "best", threshold: ThresholdOption = None
) -> None:
    """Register a job's checkpoint (best, last or an epoch) as the next version of NAME."""
    body = {
        "name": name,
        "job_id": job_id,
        "checkpoint": int(checkpoint) if checkpoint.isdigit() else checkpoint,
        **({} if threshold is None else {"threshold": threshold}),
    }
    registered = opts.call("POST", "/v1/models", json=body)
    warn(registered, as_json=opts.as_json)
    opts.show(registered, _version_line(lambda v: f"job {v['job_id']}, epoch {v['epoch']}"))


@command(models_app, "export")
def models_export(
    opts: Options,
    reference: str,
    output: Annotated[Path, typer.Option("--output", "-o", help="where to write it")],
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="safetensors, pt2 (torch.export), torchscript or onnx; default: by the output's suffix, "
            "else safetensors",
        ),
    ] = None,
    inputs: Annotated[
        str,
        typer.Option(help="float, or pixels (pt2, torchscript and onnx): uint8 images in, normalisation inside"),
    ] = "float",
) -> None:
    """Download a model (name, name:VERSION, name@ALIAS or job:ID[:EPOCH]) as a file."""
    by_suffix = FORMAT_OF_SUFFIX.get(output.suffix.lower())
    if fmt is not None and fmt not in FORMATS:
        raise typer.BadParameter(f"{fmt!r} is not one of {', '.join(FORMATS)}", param_hint="--format")
    if fmt is not None and by_suffix is not None and fmt != by_suffix:
        raise typer.BadParameter(
            f"-o {output.name} asks for {by_suffix}: give -o a .{SUFFIXES[fmt]} name, or leave --format out",
            param_hint="--format",
        )
    if fmt is None and by_suffix is None:
        typer.echo(
            f"note: -o {output.name} names no export format ({', '.join(FORMAT_OF_SUFFIX)}): writing safetensors; "
            "give --format for another",
            err=True,
        )
    fmt = fmt or by_suffix or "safetensors"
    partial = output.with_name(output.name + ".part")  # a download cut short leaves no file at -o
    with opts.client() as api:
        params = {"format": fmt, "inputs": inputs}
        with api.stream("GET", f"/v1/models/{reference}/export", params=params, timeout=300) as answer:
            if answer.status_code != 200:
                answer.read()
                checked(answer)
            try:
                with partial.open("wb") as file:
                    for chunk in answer.iter_bytes():
                        file.write(chunk)
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
    partial.replace(output)
    size = output.stat().st_size
    opts.show(
        {"path": str(output), "bytes": size, "format": fmt},
        lambda written: [f"{output} ({size:,} bytes, {fmt})"],
    )


@command(models_app, "import")
def models_import(
    opts: Options,
    weights: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="a safetensors state_dict")],
    name: Annotated[str, typer.Option(help="the model to add a version to")],
    model: Annotated[
        str | None,
        typer.Option(help="the architecture as JSON, e.g. '{\"arch\": \"lenet\"}'; default: the file's (an export's)"),
    ] = None,
    classes: Annotated[str | None, typer.Option(help="class names, comma-separated; default: the file's")] = None,
    input_shape: Annotated[str | None, typer.Option(help="e.g. 1,28,28; default: the file's, else 1,28,28")] = None,
    normalize: Annotated[
        str | None, typer.Option(help='how images were normalised, as JSON {"mean": [...], "std": [...]}')
    ] = None,
    threshold: ThresholdOption = None,
) -> None:
    """Register weights as the next version of a model: a safetensors state_dict trained elsewhere,
    or a file `trainyard models export` wrote (which says its architecture, classes and input)."""
    try:
        shape = [int(d) for d in input_shape.split(",")] if input_shape else None
    except ValueError:
        raise typer.BadParameter("use numbers separated by commas, e.g. 1,28,28", param_hint="--input-shape") from None
    form = {
        "name": name,
        **({"model": model} if model else {}),
        **({"input_shape": json.dumps(shape)} if shape else {}),
        **({"classes": json.dumps(classes.split(","))} if classes else {}),
        **({"normalize": normalize} if normalize else {}),
        **({"threshold": str(threshold)} if threshold is not None else {}),
    }
    with weights.open("rb") as sent:
        upload = {"file": (weights.name, sent, "application/octet-stream")}
        imported = opts.call("POST", "/v1/models/import", data=form, files=upload, timeout=300)
    warn(imported, as_json=opts.as_json)
    opts.show(imported, _version_line(lambda v: "imported"))


def models_table(answer: dict) -> list:
    table = Table("name", "latest", "versions", "aliases")
    for m in answer["data"]:
        table.add_row(
            m["name"],
            str(m["latest_version"]),
            str(len(m["versions"])),
            ", ".join(f"{a}={v}" for a, v in m["aliases"].items()),
        )
    return [table]


@command(models_app, "list")
def models_list(opts: Options) -> None:
    """Registered models, their latest versions and aliases."""
    opts.show(opts.call("GET", "/v1/models"), models_table)


def model_table(model: dict) -> list:
    """One model's versions: where each came from, its input, its classes and which aliases point at it."""
    aliases: dict[int, list[str]] = {}
    for alias, version in model["aliases"].items():
        aliases.setdefault(version, []).append(alias)
    table = Table("version", "from", "epoch", "input", "classes", "threshold", "aliases", "created")
    for v in model["versions"]:
        classes = v["classes"] or []
        table.add_row(
            str(v["version"]),
            f"job {v['job_id'][:SHORT_ID]}" if v["job_id"] else "imported",
            _fmt(v["epoch"]),
            "x".join(map(str, v["input_shape"])),
            ", ".join(classes) if len(classes) <= 6 else f"{len(classes)} classes",
            _share(v["threshold"], 2),
            ", ".join(sorted(aliases.get(v["version"], []))),
            v["created_at"][:19],
        )
    return [f"model {model['name']}: {len(model['versions'])} version(s), latest {model['latest_version']}", table]


@command(models_app, "show")
def models_show(opts: Options, name: str) -> None:
    """One model's versions and aliases."""
    opts.show(opts.call("GET", f"/v1/models/{quote(name, safe='')}"), model_table)


@command(models_app, "threshold")
def models_threshold(
    opts: Options,
    name: str,
    version: int,
    threshold: Annotated[
        float | None, typer.Argument(min=0, max=1, help="0 to 1; left out: cleared, every label is answered")
    ] = None,
) -> None:
    """Set VERSION's default confidence threshold for predict (a request's own threshold wins)."""
    answer = opts.call("PATCH", f"/v1/models/{quote(name, safe='')}/versions/{version}", json={"threshold": threshold})

    def said(version: dict) -> str:  # as given: 0.9999999 is not 1
        if version["threshold"] is None:
            return "no threshold"
        return "threshold " + _share(version["threshold"], 10, shortest=True)

    opts.show(answer, _version_line(said))


@command(models_app, "delete")
def models_delete(opts: Options, name: str, version: int) -> None:
    """Delete VERSION of NAME (one that no alias points at); the job it came from stays."""
    opts.call("DELETE", f"/v1/models/{quote(name, safe='')}/versions/{version}")
    opts.show({"name": name, "version": version, "deleted": True}, lambda _: [f"{name} version {version} deleted"])


@command(models_app, "alias")
def models_alias(opts: Options, name: str, alias: str, version: int) -> None:
    """Point NAME@ALIAS at VERSION."""
    moved = opts.call("PUT", f"/v1/models/{name}/aliases/{alias}", json={"version": version})
    warn(moved, as_json=opts.as_json)
    opts.show(moved, lambda model: [f"{name}@{alias} -> version {version}"])


@command(models_app, "unalias")
def models_unalias(opts: Options, name: str, alias: str) -> None:
    """Remove NAME@ALIAS (without production, NAME means its newest version)."""
    left = opts.call("DELETE", f"/v1/models/{name}/aliases/{alias}")
    warn(left, as_json=opts.as_json)
    opts.show(left, lambda model: [f"{name}@{alias} removed"])


def _numbers(value) -> str:
    """A tensor's values as nested lists of table numbers (NaN and infinities arrive as null)."""
    if isinstance(value, list):
        return "[" + ", ".join(_numbers(v) for v in value) + "]"
    return "nan/inf" if value is None else _fmt(value)


def parameters_views(answer: dict) -> list:
    """Each learned tensor (its values while small, else its statistics), then the error against the
    weights that generated synthetic data, as the linear-regression chapter prints it."""
    table = Table("name", "shape", "count", "values, or statistics")
    for p in answer["parameters"]:
        shown = (
            _numbers(p["values"])
            if p["values"] is not None
            else "  ".join(f"{key} {_fmt(p[key])}" for key in ("mean", "std", "min", "max", "norm"))
        )
        table.add_row(p["name"], "x".join(map(str, p["shape"])) or "scalar", f"{p['count']:,}", shown)
    views = [f"{answer['model']}: {answer['total']:,} learned numbers", table]
    error = answer["estimation_error"]
    if error:
        size = f"L2 {_fmt(error['w_error_norm'])}, largest {_fmt(error['w_error_max'])}"
        whole = error["w_error"] is not None
        views += [
            f"true w {_numbers(error['true_w'])}, true b {_fmt(error['true_b'])}"
            if whole
            else f"true b {_fmt(error['true_b'])} (w: more numbers than --max-values)",
            f"error in estimating w (true - learned): {_numbers(error['w_error']) + ' · ' if whole else ''}{size}",
            f"error in estimating b (true - learned): {_fmt(error['b_error'])}",
        ]
        if error["unfitted"]:
            views.append(
                f"the model has no weight for the data's last {error['unfitted']} term(s) (a lower degree): "
                "compared as 0, their error is their true value"
            )
    return views


@command(models_app, "params")
def models_params(
    opts: Options,
    reference: str,
    max_values: Annotated[int, typer.Option(help="give a tensor's values whole up to this many numbers")] = 100,
) -> None:
    """A model's learned weights (name, name:VERSION, name@ALIAS or job:ID[:EPOCH]); on synthetic
    data, also how far they are from the weights that generated it."""
    path = f"/v1/models/{quote(reference, safe=':@')}/parameters"
    opts.show(opts.call("GET", path, params={"max_values": max_values}), parameters_views)


# Datasets.


def dataset_lines(dataset: dict) -> list[str]:
    """What a spec calls the dataset (`uploaded:<name>`), its id, then what it holds."""
    called = f"uploaded:{dataset['name'] or dataset['id']}  (id {dataset['id'][:SHORT_ID]})"
    if dataset["status"] != "ready":  # a large upload: decoded after the answer
        return [f"{called}  {dataset['status']}: poll `trainyard datasets list` until it is ready"]
    shape = "x".join(map(str, dataset["input_shape"]))
    if len(dataset["input_shape"]) == 1:
        shape = f"{shape} features"
    classes = f", classes {', '.join(dataset['classes'])}" if dataset["classes"] else ""  # none for a regression
    return [
        f"{called}  {dataset['kind']}, {dataset['task']}, {shape}"
        f"{' ' + dataset['color'] if dataset.get('color') else ''}, "
        f"{dataset['num_train']} train / {dataset['num_test']} test{classes}",
        *([f"features (a --row's order): {', '.join(dataset['columns'])}"] if dataset.get("columns") else []),
        *(f"warning: {warning}" for warning in dataset.get("warnings", [])),
    ]


# The upload's form fields that are flags here, as a 422's location names them (body.name) and as
# the service's messages do (min_per_class).
_UPLOAD_FIELDS = re.compile(
    r"\bbody\.(name|test_fraction|image_size|color|min_per_class|seed|label_column|target_column|classes)\b"
    r"|(?<![.\w])(test_fraction|image_size|min_per_class|label_column|target_column)\b"
)


@command(datasets_app, "upload")
def datasets_upload(
    opts: Options,
    archive: Annotated[Path, typer.Argument(exists=True, dir_okay=False)],
    name: Annotated[
        str | None, typer.Option(help="what specs call it (uploaded:<name>); default: the file's name without .zip")
    ] = None,
    test_fraction: Annotated[
        float | None, typer.Option(help="test share when the archive has no test split (default 0.2)")
    ] = None,
    image_size: int | None = None,
    color: Annotated[str, typer.Option(help="auto (RGB if any image has colour), rgb or grayscale")] = "auto",
    min_per_class: Annotated[int, typer.Option(help="refuse smaller classes")] = 5,
    seed: Annotated[int, typer.Option(help="seeds the test split when the zip has none")] = 0,
    label_column: Annotated[str | None, typer.Option(help="a CSV's column of classes, if not called label")] = None,
    target_column: Annotated[
        str | None, typer.Option(help="a CSV's column of values to regress, if not called target")
    ] = None,
    classes: Annotated[
        str | None,
        typer.Option(
            help="IDX files' class names, label 0 first: comma-separated (cat,dog), or a JSON list "
            '(["T-shirt/top", ...])'
        ),
    ] = None,
) -> None:
    """Upload a dataset zip; specs then use it as uploaded:<name> (or uploaded:<id>)."""
    form = {
        "color": color,
        "min_per_class": str(min_per_class),
        "seed": str(seed),
        **({"name": name} if name else {}),
        **({"test_fraction": str(test_fraction)} if test_fraction is not None else {}),
        **({"image_size": str(image_size)} if image_size else {}),
        **({"label_column": label_column} if label_column is not None else {}),
        **({"target_column": target_column} if target_column is not None else {}),
        **({"classes": classes} if classes is not None else {}),
    }
    try:
        with archive.open("rb") as sent:  # sent as it is read, not read whole first
            upload = {"file": (archive.name, sent, "application/zip")}
            answer = opts.call("POST", "/v1/datasets", data=form, files=upload)
    except Failure as failure:  # the service names its form fields; here they are these flags
        flag = _UPLOAD_FIELDS.sub(lambda m: "--" + (m[1] or m[2]).replace("_", "-"), str(failure))
        raise Failure(flag, failure.code) from None
    opts.show(answer, dataset_lines)


def datasets_table(answer: dict) -> list:
    table = Table(id_column("id"), "name", "status", "kind", "shape", "train", "test", "classes")
    for d in answer["data"]:
        shape = "x".join(map(str, d["input_shape"])) if d["input_shape"] else ""
        status = d["status"] if d["status"] != "failed" else f"failed: {d['error']}"
        table.add_row(
            d["id"][:SHORT_ID],
            d["name"],
            status,
            d["kind"] or "",
            shape,
            str(d["num_train"] or ""),
            str(d["num_test"] or ""),
            ", ".join(d["classes"] or []),
        )
    return [table]


@command(datasets_app, "list")
def datasets_list(opts: Options) -> None:
    """Uploaded datasets."""
    opts.show(opts.call("GET", "/v1/datasets"), datasets_table)


@command(datasets_app, "show")
def datasets_show(
    opts: Options, dataset_id: Annotated[str, typer.Argument(help="its id, a unique prefix of it, or its name")]
) -> None:
    """One uploaded dataset: what specs call it and what it holds."""
    opts.show(opts.call("GET", f"/v1/datasets/{quote(dataset_id, safe='')}"), dataset_lines)


@command(datasets_app, "delete")
def datasets_delete(
    opts: Options,
    dataset_id: Annotated[str, typer.Argument(help="its id, a unique prefix of it, or its name")],
    force: Annotated[
        bool, typer.Option("--force", help="even if stopped jobs that could resume use it (they then cannot)")
    ] = False,
) -> None:
    """Delete an uploaded dataset that no queued or running job or unfinished sweep uses, nor
    (without --force) a stopped job that can still be resumed."""
    dataset = opts.call("GET", f"/v1/datasets/{quote(dataset_id, safe='')}")  # its id and name, to say them
    opts.call("DELETE", f"/v1/datasets/{dataset['id']}", params={"force": "true"} if force else None)
    opts.show(
        {"id": dataset["id"], "name": dataset["name"], "deleted": True},
        lambda answer: [f"dataset {answer['name']} ({answer['id'][:SHORT_ID]}) deleted"],
    )
