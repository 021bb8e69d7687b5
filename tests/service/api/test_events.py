"""The event stream's protocol, pure: which events a snapshot holds for a client's cursor, in order."""

from __future__ import annotations

from service.api.events import Cursor, Snapshot, new_events


def transition(to_status: str) -> dict:
    return {"to_status": to_status}


def finished_job() -> Snapshot:
    return Snapshot(
        status="succeeded",
        waiting=None,
        transitions=[transition("queued"), transition("running"), transition("succeeded")],
        metrics=[{"epoch": 1}, {"epoch": 2}],
        logs=[{"id": 7}],
    )


def test_a_finished_jobs_replay_ends_with_its_end():
    events = new_events(finished_job(), Cursor())
    assert [(kind, data.get("to_status", data.get("epoch", data.get("id")))) for kind, data, _ in events] == [
        ("status", "queued"),
        ("status", "running"),
        ("epoch", 1),
        ("epoch", 2),
        ("log", 7),
        ("status", "succeeded"),
        ("end", None),
    ]
    assert events[-1][2] == "3.2.7.-"


def test_a_reconnect_gets_only_what_it_missed():
    whole = new_events(finished_job(), Cursor())
    after_first_epoch = Cursor.parse(whole[2][2])
    assert [kind for kind, _, _ in new_events(finished_job(), after_first_epoch)] == ["epoch", "log", "status", "end"]
    assert new_events(finished_job(), Cursor.parse(whole[-1][2]))[:-1] == []  # nothing but the end again


def test_a_waiting_event_carries_the_snapshots_own_words_and_a_null_when_the_wait_ends():
    said = "the store s3://b/p is unavailable (...): the worker has retried it since 12:00:00 UTC"
    running = Snapshot("running", "store_unavailable", [transition("queued"), transition("running")], [], [], said)
    cursor = Cursor()
    assert [e[:2] for e in new_events(running, cursor)][-1] == (
        "waiting",
        {"reason": "store_unavailable", "detail": said},
    )
    assert new_events(running, cursor) == []  # said once
    back = Snapshot("running", None, running.transitions, [], [])
    assert [e[:2] for e in new_events(back, cursor)] == [("waiting", {"reason": None, "detail": None})]
