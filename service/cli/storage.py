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
    it holds and its bound (TRAINYARD_CACHE_BYTES). Run it where the service or a worker runs."""
    from service.core.settings import get_settings
    from service.core.storage import get_storage
    from service.core.storage.migrate import size_text

    settings = get_settings()
    storage = get_storage(settings)
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
    }
    if as_json:
        emit_json(data)
        return
    typer.echo(f"as this machine's settings say (TRAINYARD_HOME {settings.home}):")
    if local:
        where = ", ".join(f"{area} {root}" for area, root in data["folders"].items())
        typer.echo(f"store: {storage.url} (folders: {where}; files are read where they are, no cache)")
        if not settings.home.exists():
            typer.echo(f"note: {settings.home} does not exist here: run this where the service runs, with its settings")
        return
    typer.echo(f"store: {storage.url} (an object store; workers retry it for {settings.storage_retry_seconds:g} s)")
    typer.echo(
        f"cache: {settings.object_cache_dir}, {size_text(used)} in {len(entries)} file(s) of "
        f"{size_text(settings.cache_bytes)} (TRAINYARD_CACHE_BYTES)"
    )


@storage_app.command("migrate")
def migrate(
    to: str = typer.Option(..., "--to", help="the store to copy into: s3://bucket/prefix or file:///path"),
    as_json: JsonOption = False,
) -> None:
    """Copy every file the database records (datasets, checkpoints, training states, registered
    versions) from the current store into another, under the same keys: each checked against the
    sha256 recorded for it (files recorded without one get theirs recorded), skipped if the target
    has it already. Safe to run again, and a stopped run goes on where it stopped; it deletes
    nothing. Then set TRAINYARD_STORAGE_URL to the target on every process. Exit status: 0 all
    there, 1 files corrupt, missing or rewritten meanwhile (not copied), 2 a bad URL, 3 a store
    that cannot be reached or refuses, 130 interrupted (run it again to go on)."""
    from service.core.migrate import upgrade
    from service.core.settings import get_settings
    from service.core.storage.migrate import COPIED, SKIPPED, Migration, Step, size_text

    upgrade()  # the records it reads are those of the newest schema (as `trainyard api` does at start)
    try:
        migration = Migration(get_settings(), to)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(USAGE) from None

    def show(step: Step) -> None:
        if step.outcome == COPIED:
            typer.echo(f"copied {step.key} ({size_text(step.size or 0)})")
        elif step.outcome != SKIPPED:
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
            typer.echo(f"next: set TRAINYARD_STORAGE_URL={to} on every process (API and workers) and restart them")
    if report.stopped:
        raise typer.Exit(INTERRUPTED if report.stopped == "interrupted" else UNREACHABLE)
    raise typer.Exit(OK if report.complete else SOME_NOT_COPIED)
