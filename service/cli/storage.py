"""`trainyard storage`: the store this machine's processes use and its cache (`info`), and copying
every file the database records into another store (`migrate`). Like `trainyard migrate`, these
work on the database and the store themselves, not through the API: run them where the service's
TRAINYARD_* and AWS_* settings are."""

from __future__ import annotations

from typing import Annotated

import typer

from service.cli.client import OK, UNREACHABLE, USAGE, emit_json

storage_app = typer.Typer(
    help="Where datasets, checkpoints and registered versions are stored, and moving them to another store.",
    no_args_is_help=True,
)
JsonOption = Annotated[bool, typer.Option("--json", help="print JSON instead of lines")]
SOME_NOT_COPIED, INTERRUPTED = 1, 130


@storage_app.command("info")
def info(as_json: JsonOption = False) -> None:
    """The store as this machine's settings say it (TRAINYARD_STORAGE_URL; unset: the home's
    folders) and, for an object store, this machine's cache of its objects: its folder, the bytes
    it holds and its bound (TRAINYARD_CACHE_BYTES). Run it where the service or a worker runs.
    Exit status 1 when this machine's store is not the service's (a worker here is refused), else 0."""
    from service.core.settings import get_settings
    from service.core.storage import get_storage
    from service.core.storage.check import problem_in

    settings = get_settings()
    home_here = settings.home.exists()  # before the embedded database is opened, which makes its folder
    storage = get_storage(settings)
    service = service_stores(storage) if home_here else service_stores_unknown(f"{settings.home} does not exist here")
    local = storage.store.local
    entries = [] if local else storage.cache.entries()  # files in folders are read where they are
    used = sum(size for _, size, _ in entries)
    data = {
        "url": storage.url,
        "configured": settings.storage_url,
        "kind": "folders" if local else "object store",
        "folders": {area: str(root) for area, root in storage.store.roots.items()} if local else None,
        "cache_dir": None if local else str(settings.object_cache_dir),
        "cache_files": None if local else len(entries),
        "cache_bytes_used": None if local else used,
        "cache_bytes_max": None if local else settings.cache_bytes,
        "retry_seconds": settings.storage_retry_seconds,
        **service,
    }
    if as_json:
        emit_json(data)
    else:
        show_info(settings, data, home_here)
    if problem_in(service["this_store"]):
        raise typer.Exit(1)


def show_info(settings, data: dict, home_here: bool) -> None:
    """info's answer as lines of text."""
    from models.units import human_bytes

    typer.echo(f"as this machine's settings say (TRAINYARD_HOME {settings.home}):")
    if data["folders"] is not None:
        where = ", ".join(f"{area} {root}" for area, root in data["folders"].items())
        typer.echo(f"store: {data['url']} (folders: {where}; files are read where they are, no cache)")
    else:
        typer.echo(f"store: {data['url']} (an object store; workers retry it for {data['retry_seconds']:g} s)")
        typer.echo(
            f"cache: {data['cache_dir']}, {human_bytes(data['cache_bytes_used'])} in {data['cache_files']} file(s) of "
            f"{human_bytes(data['cache_bytes_max'])} (TRAINYARD_CACHE_BYTES)"
        )
    for line in service_lines(data):
        typer.echo(line)
    if not home_here:
        typer.echo(f"note: {settings.home} does not exist here: run this where the service runs, with its settings")


def service_stores(storage) -> dict:
    """What the database records of the service's store, and whether this machine's is it (the
    question a worker asks at its start; service/core/storage/check.py)."""
    from service.core.db import read_scope
    from service.core.storage.check import MACHINE, readiness, recorded_marks

    try:
        with read_scope() as session:
            marks = recorded_marks(session)
    except Exception as error:  # no database here, or one never migrated: this machine's settings still tell
        return service_stores_unknown(f"{type(error).__name__}: {error}")
    return {
        "service_marked": marks.current is not None,  # the API has left its mark (in a store recorded since 0023)
        "service_store": marks.current.store_url if marks.current else None,
        "moving_to": [mark.store_url for mark in marks.next],
        "this_store": readiness(storage.store, MACHINE),
    }


def service_stores_unknown(why: str) -> dict:
    return {"service_marked": None, "service_store": None, "moving_to": [], "this_store": f"unchecked: {why}"}


def service_lines(service: dict) -> list[str]:
    from service.core.storage.check import problem_in

    lines = []
    if service["service_store"]:
        lines.append(f"the service's store, as its API left its mark: {service['service_store']}")
    lines += [
        f"moving to: {url} (storage migrate copied there; the first API started on it makes it the service's store; "
        f"`trainyard storage withdraw {url}` calls the move off)"
        for url in service["moving_to"]
    ]
    said = service["this_store"]
    if said == "ok":
        lines.append(
            "this machine's store is the service's" if service["service_marked"] else "no API has left its mark yet"
        )
    elif problem := problem_in(said):
        lines.append(f"warning: {problem}")
    else:
        lines.append(f"whether this machine's store is the service's: {said}")
    return lines


@storage_app.command("migrate")
def migrate(
    to: str = typer.Option(..., "--to", help="the store to copy into: s3://bucket/prefix or file:///path"),
    as_json: JsonOption = False,
) -> None:
    """Copy every file the database records (datasets, checkpoints, training states, registered
    versions) from the current store into another, under the same keys: each checked against the
    sha256 recorded for it (files recorded without one get theirs recorded), skipped if the target
    has it already. Safe to run again, and a stopped run goes on where it stopped; it deletes
    nothing. Then set TRAINYARD_STORAGE_URL to the target on every process, and start the API
    first. Exit status: 0 all there, 1 files corrupt, missing or rewritten meanwhile (not copied),
    2 a bad URL, a target that is the source, or a source that is not the service's store, 3 a
    store that cannot be reached or refuses, 130 interrupted (run it again to go on)."""
    from models.units import human_bytes
    from service.core.migrate import NewerSchema, upgrade
    from service.core.settings import get_settings
    from service.core.storage.migrate import COPIED, GONE, SKIPPED, Migration, Step

    try:
        upgrade()  # the records it reads are those of the newest schema
    except NewerSchema as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(USAGE) from None
    try:
        migration = Migration(get_settings(), to)
        migration.check()
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(USAGE) from None

    def show(step: Step) -> None:
        if step.outcome == COPIED:
            typer.echo(f"copied {step.key} ({human_bytes(step.size or 0)})")
        elif step.outcome not in (SKIPPED, GONE):  # a file deleted with its record meanwhile is counted at the end
            typer.echo(f"not copied: {step.error}", err=True)

    try:
        for step in migration.steps():
            if not as_json:
                show(step)
    except KeyboardInterrupt:  # each file copied so far is whole and recorded: the next run goes on
        migration.report.stopped = "interrupted"
    report = migration.report
    if as_json:
        emit_json(report.as_dict())
    else:
        for line in report.summary():
            typer.echo(line)
        if report.complete:
            first = "stop the workers and the API and run it again; then " if report.active_jobs else ""
            typer.echo(
                f"next: {first}set TRAINYARD_STORAGE_URL={to} on every process, start the API first (it makes the "
                "target the service's store; workers on it are refused until then), then the workers"
            )
    if report.stopped:
        raise typer.Exit(INTERRUPTED if report.stopped == "interrupted" else UNREACHABLE)
    raise typer.Exit(OK if report.complete else SOME_NOT_COPIED)


@storage_app.command("withdraw")
def withdraw(
    url: Annotated[str, typer.Argument(help="the store `storage migrate` copied to, as `info` lists it")],
) -> None:
    """Call off a move `storage migrate` prepared (a mistyped or abandoned target): an API started
    on that store no longer makes it the service's, and workers on it are refused. The files copied
    there stay (delete them with the store's own tools); `storage migrate` to it again prepares a
    new move. Exit status 2 when no move to that store is pending."""
    from service.core.storage.check import withdraw_next

    if not withdraw_next(url):
        typer.echo(f"error: no move to {url} is pending (`trainyard storage info` lists them)", err=True)
        raise typer.Exit(USAGE)
    typer.echo(f"the move to {url} is withdrawn: the service stays where it is; the files copied there stay")
