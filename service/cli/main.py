"""The trainyard command line: migrate the database and run the API and a worker (started and
stopped by service/cli/supervisor.py, whose docstring follows the start-up chain), the client
commands of service/cli/client.py, `storage` (service/cli/storage.py) and `sample-data`
(service/cli/sample_data.py)."""

from __future__ import annotations

import inspect
import os
import shutil
import sys
from pathlib import Path

import httpx
import pydantic
import typer

from service.cli.client import UNREACHABLE, USAGE, Failure
from service.cli.client import register as register_client_commands
from service.cli.storage import storage_app
from service.cli.supervisor import Child, port_is_free, start, start_forked, stopped_on_error, supervise


def _flags_show_no_type() -> None:
    """typer's rich help prints a type after a flag (`--follow -f <bool>`) as if it took a value:
    show none for flags, as click's plain help does."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich

    def display_type_rich(self, ctx):
        return None if self.is_flag or self.count else shown(self, ctx)

    TyperOption.display_type_rich = display_type_rich


_flags_show_no_type()
app = typer.Typer(
    help="trainyard: train and serve PyTorch models over HTTP. Exit status: 0 success, 1 the "
    "job failed or was cancelled, 2 usage or a request the service rejected, 3 the service "
    "cannot be reached, 4 refused by authentication, 5 the service failed (500).",
    no_args_is_help=True,
)


def _version(show: bool) -> None:
    if show:
        from importlib.metadata import version

        typer.echo(f"trainyard {version('trainyard')}")
        raise typer.Exit()


@app.callback()
def _options(
    ctx: typer.Context,
    show_version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="print the version and exit"
    ),
    url: str | None = typer.Option(
        None, "--url", help="the service's base URL, for the commands that call it (as their own --url)"
    ),
    token: str | None = typer.Option(
        None, "--token", help="an API token, for the commands that call the service (as their own --token)"
    ),
) -> None:
    """trainyard: train and serve PyTorch models over HTTP."""
    ctx.obj = {"url": url, "token": token}  # what a command's own --url and --token fall back to


@app.command()
def migrate() -> None:
    """Apply the database migrations (and prepare the embedded broker's tables)."""
    from service.core.broker import ping_broker
    from service.core.migrate import NewerSchema, current_revision, upgrade
    from service.core.settings import get_settings

    settings = get_settings()
    settings.ensure_dirs()
    try:
        upgrade()
    except NewerSchema as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    if settings.embedded_broker:
        ping_broker()
    typer.echo(f"database ready at revision {current_revision()}: {_redact(settings.database_url)}")


def worker_queues(settings, explicit: str | None = None) -> list[str]:
    """The queues a worker serves: those given, else the CPU queue, plus the GPU queue where CUDA is."""

    given = explicit if explicit is not None else settings.worker_queues
    if given:
        return [q for q in given.split(",") if q]
    return [settings.queue, settings.gpu_queue] if _cuda_here() else [settings.queue]


def _cuda_here() -> bool:
    from service.core import worker_registry

    return worker_registry.may_have_gpu() and worker_registry.has_cuda(worker_registry.probe_devices())


def worker_command(settings, queues: list[str], name: str = "trainyard") -> list[str]:
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.celery_app",
        "worker",
        f"--loglevel={settings.log_level}",
        "--queues",
        ",".join(queues),
        "--concurrency",
        str(settings.worker_concurrency),
        "--hostname",
        f"{name}-{os.getpid()}@%h",
    ]


def gpu_indices(gpus: str) -> list[int]:
    """`all` or a comma-separated list of GPU indices."""
    from service.core import worker_registry

    if gpus == "all":
        found = worker_registry.probe_devices()["devices"] if worker_registry.may_have_gpu() else []
        count = sum(1 for d in found if d["kind"] == "cuda")
        if count == 0:
            raise typer.BadParameter("this machine has no CUDA device", param_hint="--gpus")
        return list(range(count))
    try:
        return [int(part) for part in gpus.split(",")]
    except ValueError:
        raise typer.BadParameter("use all, or GPU indices such as 0,1", param_hint="--gpus") from None


def gpu_workers(settings, indices: list[int], queues: list[str]) -> dict[str, tuple[list[str], dict]]:
    """One worker per GPU, each seeing only its own device: name -> (command, environment)."""
    return {
        f"gpu{i}": (
            worker_command(settings, queues, name=f"trainyard-gpu{i}"),
            {**os.environ, "CUDA_VISIBLE_DEVICES": str(i)},
        )
        for i in indices
    }


API_MODULE = "service.api.server"  # one API process; TRAINYARD_API_WORKERS of them share the port
API_PRELOAD = "service.api.preload"  # what the fork server imports once for all of them


def api_environment(settings) -> dict[str, str]:
    """The API processes' environment, with the folders where they share readiness and metrics
    (emptied first: nothing of an earlier run may count)."""
    run_dir = settings.home / "run" / f"api-{settings.port}"
    shutil.rmtree(run_dir, ignore_errors=True)
    (run_dir / "metrics").mkdir(parents=True)
    return {**os.environ, "TRAINYARD_API_RUN_DIR": str(run_dir), "PROMETHEUS_MULTIPROC_DIR": str(run_dir / "metrics")}


@app.command()
def worker(
    queues: str | None = typer.Option(
        None,
        help="queues to serve, comma-separated (default: the CPU queue, "
        "and the GPU queue where CUDA is; TRAINYARD_WORKER_QUEUES)",
    ),
    gpus: str | None = typer.Option(None, help="run one worker per GPU: all, or indices such as 0,1"),
) -> None:
    """Run a Celery worker in the foreground (or one per GPU with --gpus)."""
    from service.core.settings import get_settings

    settings = get_settings()
    if gpus is None:
        served = worker_queues(settings, queues)
        # Queues named by hand only: the default serves the GPU queue because it probed CUDA
        named = queues is not None or bool(settings.worker_queues)
        if named and settings.gpu_queue in served and not _cuda_here():
            typer.echo(
                f"warning: this machine has no CUDA device, yet the worker serves the GPU queue "
                f"{settings.gpu_queue!r}: the cuda jobs it takes go back to the queue for a worker with a GPU",
                err=True,
            )
        os.execv(sys.executable, worker_command(settings, served))
    indices = gpu_indices(gpus)
    served = worker_queues(settings, queues) if queues else [settings.queue, settings.gpu_queue]
    children = {name: start(command, env) for name, (command, env) in gpu_workers(settings, indices, served).items()}
    typer.echo(f"{len(children)} GPU worker(s) started ({', '.join(f'cuda:{i}' for i in indices)}); Ctrl-C stops them")
    raise typer.Exit(supervise(children))


def refuse_exposure(settings) -> None:
    """Exit 2 if the API would listen beyond loopback without tokens (and without TRAINYARD_ALLOW_OPEN)."""
    refusal = settings.exposure_refusal()
    if refusal:
        typer.echo(refusal, err=True)
        raise typer.Exit(2)


def start_api(settings) -> dict[str, Child]:
    """The API's TRAINYARD_API_WORKERS processes, by name; exit 1 if something listens on the port."""
    if not port_is_free(settings.host, settings.port):
        typer.echo(
            f"{settings.host}:{settings.port} is already in use; is another server running? (TRAINYARD_PORT)", err=True
        )
        raise typer.Exit(1)
    env = api_environment(settings)
    names = ["api"] if settings.api_workers == 1 else [f"api-{i}" for i in range(settings.api_workers)]
    with stopped_on_error({}) as children:
        for name in names:
            children[name] = start_forked(API_MODULE, env, API_PRELOAD)
    return children


def leave_store_mark(settings) -> str:
    """Put the service's mark in the API's store before a worker looks for it (a home whose folders
    were emptied, say; the API's housekeeping puts it back later too), and say so when that store
    is not the service's (service/core/storage/check.py); the store's URL."""
    from service.core.storage import get_storage
    from service.core.storage.check import leave_mark, problem_in, readiness

    store = get_storage(settings).store
    try:
        leave_mark(store, move=True)
    except Exception as error:  # a store or database away now: each API process tries again as it starts
        typer.echo(f"warning: could not leave the service's mark in its store yet: {error}", err=True)
        return store.url
    if problem := problem_in(readiness(store)):
        typer.echo(f"warning: {problem}; /readyz answers 503 meanwhile", err=True)
    return store.url


@app.command()
def api() -> None:
    """Run the HTTP API in the foreground, in TRAINYARD_API_WORKERS processes."""
    from service.core.settings import get_settings

    settings = get_settings()
    refuse_exposure(settings)
    settings.ensure_dirs()
    store = leave_store_mark(settings)
    children = start_api(settings)
    typer.echo(
        f"API starting on http://{settings.host}:{settings.port} in {len(children)} process(es), with files in "
        f"{store}; Ctrl-C stops it",
        err=True,
    )
    raise typer.Exit(supervise(children))


@app.command("serve", hidden=True)  # an alias of run, named in its help
@app.command()
def run(skip_migrate: bool = typer.Option(False, "--skip-migrate", help="Do not apply migrations first.")) -> None:
    """Migrate, then run the API and one worker until Ctrl-C (also: serve)."""
    from service.core.settings import get_settings

    settings = get_settings()
    refuse_exposure(settings)
    if not skip_migrate:
        migrate()
    store = leave_store_mark(settings)
    queues = worker_queues(settings)
    with stopped_on_error(start_api(settings)) as children:  # first: it refuses a port in use
        children["worker"] = start(worker_command(settings, queues))
    typer.echo(
        f"trainyard is starting on http://{settings.host}:{settings.port} with {settings.api_workers} "
        f"API process(es) (TRAINYARD_API_WORKERS) and a worker serving {', '.join(queues)} "
        f"(state in {settings.home}, files in {store}, data in {settings.data_dir}); Ctrl-C stops it"
    )
    code = supervise(children)
    try:
        typer.echo("trainyard stopped")
    except OSError:  # its terminal is gone (the SIGHUP it stopped on): what is left to write goes nowhere
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    raise typer.Exit(code)


@app.command("sample-data")
def sample_data(
    archive: Path = typer.Argument(..., dir_okay=False, help="the zip to write, e.g. shapes.zip"),
    examples: Path | None = typer.Option(
        None, file_okay=False, help="also write one new image per class to predict on, DIR/circle.png, ..."
    ),
    per_class: int = typer.Option(100, min=1, help="training images per class"),
    test_per_class: int = typer.Option(25, min=1, help="test images per class"),
    seed: int = typer.Option(0, help="the same seed writes the same bytes"),
) -> None:
    """Write a small image dataset to try trainyard with: 4 classes of drawn shapes, 28x28 grey PNGs
    in the class folders `trainyard datasets upload` takes. Needs no service and no download."""
    from service.cli.sample_data import SHAPES, shapes_zip, write_examples

    if archive.suffix.lower() != ".zip":
        raise Failure(f"sample-data writes a zip: name it {archive.name.split('.')[0] or 'shapes'}.zip", USAGE)
    try:
        archive.write_bytes(shapes_zip(seed=seed, per_class=per_class, test_per_class=test_per_class))
    except OSError as exc:
        raise Failure(f"cannot write {archive}: {exc.strerror or exc}", USAGE) from None
    typer.echo(
        f"{archive}: {len(SHAPES) * (per_class + test_per_class)} images of {', '.join(SHAPES)} "
        f"({per_class} train and {test_per_class} test each, 28x28 grey, seed {seed})"
    )
    if examples is not None:
        try:
            written = write_examples(examples, seed=seed)
        except OSError as exc:
            raise Failure(f"cannot write the examples in {examples}: {exc.strerror or exc}", USAGE) from None
        typer.echo(f"{examples}: {', '.join(path.name for path in written)}, not in the zip")


def _redact(url: str) -> str:
    """Hide a password in a database URL."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


register_client_commands(app)
app.add_typer(storage_app, name="storage")


def _summaries_on_one_line(commands: typer.Typer) -> None:
    """Each command's line in its group's list: its docstring's first paragraph as one line (rich
    would keep the docstring's own line breaks, ragged in a narrower column)."""
    for info in commands.registered_commands:
        if info.short_help is None and info.callback is not None and info.callback.__doc__:
            info.short_help = " ".join(inspect.cleandoc(info.callback.__doc__).split("\n\n")[0].split())
    for group in commands.registered_groups:
        _summaries_on_one_line(group.typer_instance)


_summaries_on_one_line(app)


def main() -> None:
    """The `trainyard` command: errors are one line on stderr, with the exit status they mean."""
    try:
        app()
    except Failure as failure:
        typer.echo(f"error: {failure}", err=True)
        sys.exit(failure.code)
    except pydantic.ValidationError as exc:  # TRAINYARD_* settings that are not valid
        if exc.title != "Settings":
            raise
        for problem in exc.errors():
            name = "TRAINYARD_" + "_".join(str(part) for part in problem["loc"]).upper()
            secret = any(word in name for word in ("TOKEN", "AUTH", "PASSWORD", "SECRET"))
            given = "(not shown)" if secret else repr(problem.get("input"))
            typer.echo(f"error: {name}={given}: {problem['msg'].removeprefix('Value error, ')}", err=True)
        sys.exit(USAGE)
    except httpx.TransportError as exc:
        request = getattr(exc, "_request", None)
        where = f"{request.url.scheme}://{request.url.netloc.decode()}" if request is not None else "the service"
        hint = (
            (
                "; is the service running? Start it with `make run` (or `trainyard run`) in the repository, "
                "or point the CLI at it with --url or TRAINYARD_URL"
            )
            if isinstance(exc, httpx.ConnectError)
            else ""
        )
        typer.echo(f"error: cannot reach the service at {where} ({exc or type(exc).__name__}){hint}", err=True)
        sys.exit(UNREACHABLE)


if __name__ == "__main__":
    main()
