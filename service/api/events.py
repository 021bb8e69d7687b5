"""The job event stream's protocol: what a client has read (a Cursor, which is also every event's
id), and the events a snapshot of the job holds that the client has not had yet. Pure: the route
in routers/jobs.py reads the snapshots and sends the events."""

from __future__ import annotations

import re
from dataclasses import dataclass

from service.core.tables import JobStatus


@dataclass
class Snapshot:
    """A job as one short read saw it: its status, waiting reason, transitions, metrics and new log lines."""

    status: str
    waiting: str | None
    transitions: list[dict]
    metrics: list[dict]
    logs: list[dict]
    waiting_detail: str | None = None  # the waiting reason in words


@dataclass
class Cursor:
    """How far a client has read the stream; every event's id is the cursor after it, so that a
    client reconnecting with Last-Event-ID gets exactly the events it has not seen."""

    transitions: int = 0
    epoch: int = 0
    log: int = 0
    waiting: str | None = None

    def __str__(self) -> str:
        return f"{self.transitions}.{self.epoch}.{self.log}.{self.waiting or '-'}"

    @classmethod
    def parse(cls, raw: str) -> Cursor:
        """The cursor a Last-Event-ID names; ValueError if this stream never sent it."""
        parts = raw.split(".")
        if len(parts) != 4 or not all(p.isdigit() for p in parts[:3]) or not re.fullmatch(r"[a-z_]{1,50}|-", parts[3]):
            raise ValueError("not an event id this stream sent (e.g. 3.2.17.-)")
        return cls(int(parts[0]), int(parts[1]), int(parts[2]), None if parts[3] == "-" else parts[3])


def new_events(snapshot: Snapshot, cursor: Cursor) -> list[tuple[str, dict, str]]:
    """The (event, data, id) a client at `cursor` has not had, in order; moves the cursor past them."""
    events = []
    new = snapshot.transitions[cursor.transitions :]
    # The job's end comes after the epochs and lines that led to it, also when a finished job's
    # whole history is replayed at once.
    ending = new[-1:] if new and new[-1]["to_status"] in JobStatus.FINAL else []
    for transition in new[: len(new) - len(ending)]:
        cursor.transitions += 1
        events.append(("status", transition, str(cursor)))
    if snapshot.waiting != cursor.waiting:
        cursor.waiting = snapshot.waiting
        events.append(("waiting", {"reason": snapshot.waiting, "detail": snapshot.waiting_detail}, str(cursor)))
    for row in snapshot.metrics:
        if row["epoch"] > cursor.epoch:
            cursor.epoch = row["epoch"]
            events.append(("epoch", row, str(cursor)))
    for line in snapshot.logs:
        if line["id"] > cursor.log:
            cursor.log = line["id"]
            events.append(("log", line, str(cursor)))
    for transition in ending:
        cursor.transitions += 1
        events.append(("status", transition, str(cursor)))
    if snapshot.status in JobStatus.FINAL:
        events.append(("end", {"status": snapshot.status}, str(cursor)))
    return events
