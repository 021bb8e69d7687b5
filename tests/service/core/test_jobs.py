"""The job state machine on a real SQLite file and a real PostgreSQL server: claims, leases,
epochs, cancel and resume, each transition logged and guarded."""

from __future__ import annotations

import os
import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from models.spec.job import JobSpec
from service.core import job_logs, jobs
from service.core.errors import NotFound
from service.core.storage import StoredFile
from service.core.tables import Checkpoint, EpochMetric, Job, JobStatus, utcnow

LEASE = {"lease_seconds": 30, "max_attempts": 3}
SPEC = JobSpec.model_validate({"model": {"arch": "mlp"}, "data": {"dataset": "fashion-mnist"}, "epochs": 3})


def test_only_one_of_many_concurrent_claims_wins(Session):
    with Session() as session:
        job_id = jobs.create_job(session, spec=SPEC, task="classification").id
        session.commit()
    barrier = threading.Barrier(8)
    wins, errors = [], []

    def claim(n):
        try:
            with Session() as session:
                barrier.wait()
                if jobs.claim_job(session, job_id=job_id, worker=f"w{n}", **LEASE):
                    wins.append(n)
                session.commit()
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(wins) == 1
    with Session() as session:
        job = jobs.get_job(session, job_id=job_id)
        assert job.status == JobStatus.RUNNING and job.attempt == 1 and job.worker == f"w{wins[0]}"
        assert job.started_at is not None and job.started_at.tzinfo is not None


def test_recording_an_epoch_twice_keeps_one_row_with_the_latest_values(Session):
    with Session() as session:
        job_id = jobs.create_job(session, spec=SPEC, task="classification").id
        jobs.claim_job(session, job_id=job_id, worker="w", **LEASE)
        session.commit()
    for loss in (0.9, 0.5):
        with Session() as session:
            jobs.record_epoch(
                session,
                job_id=job_id,
                attempt=1,
                metrics={"epoch": 1, "train_loss": loss, "test_acc": 0.5},
                checkpoint=StoredFile("checkpoints/" + f"{job_id}/epoch-0001.safetensors", 10),
            )
            session.commit()
    with Session() as session:
        jobs.record_epoch(
            session,
            job_id=job_id,
            attempt=1,
            metrics={"epoch": 2, "train_loss": 0.4, "test_acc": 0.7},
            checkpoint=StoredFile("checkpoints/" + f"{job_id}/epoch-0002.safetensors", 10),
        )
        session.commit()
        rows = jobs.get_metrics(session, job_id=job_id)
        assert [(r.epoch, r.train_loss) for r in rows] == [(1, 0.5), (2, 0.4)]
        assert session.scalar(select(func.count()).select_from(Checkpoint)) == 2
        job = jobs.get_job(session, job_id=job_id)
        assert job.epoch == 2 and jobs.best_checkpoint(job).epoch == 2 and jobs.last_checkpoint(job).epoch == 2
        other = jobs.create_job(session, spec=SPEC, task="classification").id
        newest = jobs.latest_metrics(session, job_ids=[job_id, other])
        assert list(newest) == [job_id] and newest[job_id].epoch == 2 and newest[job_id].train_loss == 0.4


def test_finish_only_moves_running_jobs(Session):
    with Session() as session:
        job_id = jobs.create_job(session, spec=SPEC, task="classification").id
        assert not jobs.finish_job(session, job_id=job_id, attempt=0, status=JobStatus.SUCCEEDED)
        session.commit()
        assert jobs.get_job(session, job_id=job_id).status == JobStatus.QUEUED
        jobs.claim_job(session, job_id=job_id, worker="w", **LEASE)
        assert jobs.finish_job(session, job_id=job_id, attempt=1, status=JobStatus.FAILED, reason="x", error="boom")
        session.commit()
        session.expire_all()
        job = jobs.get_job(session, job_id=job_id)
        assert (job.status, job.reason, job.error) == (JobStatus.FAILED, "x", "boom")
        assert job.finished_at is not None


def test_listing_pages_newest_first(Session):
    with Session() as session:
        ids = [jobs.create_job(session, spec=SPEC, task="classification").id for _ in range(5)]
        session.commit()
        page, count = jobs.list_jobs(session, status=None, limit=2, offset=0)
        assert count == 5 and len(page) == 2
        rest, _ = jobs.list_jobs(session, status=None, limit=10, offset=2)
        assert len(rest) == 3 and {j.id for j in page + rest} == set(ids)
        assert jobs.list_jobs(session, status=["running"], limit=10, offset=0)[1] == 0
        assert jobs.list_jobs(session, status=["running", "queued"], limit=10, offset=0)[1] == 5
        assert session.scalar(select(func.count()).select_from(EpochMetric)) == 0


def _job(Session) -> str:
    with Session() as session:
        job_id = jobs.create_job(session, spec=SPEC, task="classification").id
        session.commit()
    return job_id


def test_life_cycle_is_logged_and_guarded(Session):
    job_id = _job(Session)
    with Session() as session:
        with pytest.raises(jobs.InvalidTransition, match="cannot resume .* it is queued"):
            jobs.request_resume(session, job_id=job_id)
        assert jobs.claim_job(session, job_id=job_id, worker="w", **LEASE).attempt == 1
        jobs.request_cancel(session, job_id=job_id)
        assert jobs.heartbeat(session, job_id=job_id, attempt=1) == JobStatus.CANCELLING
        assert jobs.finish_job(session, job_id=job_id, attempt=1, status=JobStatus.CANCELLED, reason="user_cancelled")
        with pytest.raises(jobs.InvalidTransition, match="it was cancelled; resume it to train on$"):
            jobs.request_cancel(session, job_id=job_id)
        jobs.request_resume(session, job_id=job_id)
        assert jobs.claim_job(session, job_id=job_id, worker="w2", **LEASE).attempt == 2
        session.commit()
        job = jobs.get_job(session, job_id=job_id)
        steps = [(e.from_status, e.to_status, e.reason, e.attempt) for e in job.events]
        assert steps == [
            (None, "queued", None, 0),
            ("queued", "running", None, 1),
            ("running", "cancelling", "user_cancelled", 1),
            ("cancelling", "cancelled", "user_cancelled", 1),
            ("cancelled", "queued", None, 1),
            ("queued", "running", None, 2),
        ]


def test_cancelling_a_queued_job_is_immediate(Session):
    job_id = _job(Session)
    with Session() as session:
        jobs.request_cancel(session, job_id=job_id)
        session.commit()
        job = jobs.get_job(session, job_id=job_id)
        assert (job.status, job.reason) == ("cancelled", "user_cancelled") and job.finished_at
        assert jobs.claim_job(session, job_id=job_id, worker="w", **LEASE) is None


def test_a_stale_attempt_is_fenced_out(Session):
    job_id = _job(Session)
    with Session() as session:
        jobs.claim_job(session, job_id=job_id, worker="old", **LEASE)
        session.commit()
    with Session() as session:  # the old worker's lease expires; a new attempt takes over
        past = utcnow() + timedelta(seconds=31)
        assert jobs.reap_one(session, job_id=job_id, cutoff=past, max_attempts=3) == JobStatus.QUEUED
        assert jobs.claim_job(session, job_id=job_id, worker="new", **LEASE).attempt == 2
        session.commit()
    with Session() as session:
        assert jobs.heartbeat(session, job_id=job_id, attempt=1) is None
        with pytest.raises(jobs.LeaseLost):
            jobs.record_epoch(
                session, job_id=job_id, attempt=1, metrics={"epoch": 1}, checkpoint=StoredFile("checkpoints/" + "x", 1)
            )
        session.rollback()
        assert not jobs.finish_job(session, job_id=job_id, attempt=1, status=JobStatus.SUCCEEDED)
        assert jobs.heartbeat(session, job_id=job_id, attempt=2) == JobStatus.RUNNING
        assert jobs.get_metrics(session, job_id=job_id) == []


def test_reaper_gives_up_after_max_attempts(Session):
    job_id = _job(Session)
    future = utcnow() + timedelta(hours=1)
    with Session() as session:
        assert jobs.claim_job(session, job_id=job_id, worker="w", **LEASE).attempt == 1
        assert jobs.reap_one(session, job_id=job_id, cutoff=future, max_attempts=2) == JobStatus.QUEUED
        assert jobs.reap_one(session, job_id=job_id, cutoff=future, max_attempts=2) is None  # queued: nothing to reap
        assert jobs.claim_job(session, job_id=job_id, worker="w", **LEASE).attempt == 2
        assert jobs.reap_one(session, job_id=job_id, cutoff=future, max_attempts=2) == JobStatus.FAILED
        session.commit()
        job = jobs.get_job(session, job_id=job_id)
        assert (job.status, job.reason) == ("failed", "worker_lost") and "limit 2" in job.error
        # Each attempt's log, which stops where its worker was lost, says what became of it.
        said = [(line.attempt, line.message) for line in job_logs.read(session, job_id=job_id)]
        assert [attempt for attempt, _ in said] == [1, 2], said
        assert said[0][1].startswith("attempt 1 lost: its worker (w) was not heard from after ")
        assert said[0][1].endswith("for a lease; the job goes back to the queue and resumes from its last saved state")
        assert said[1][1].endswith("for a lease; the job fails: the worker was lost 2 times (limit 2)")


def test_a_job_whose_training_process_died_is_taken_back_by_its_worker_at_once(Session):
    """A pool process the kernel killed: its worker, alive, takes the job back at its next beat
    instead of leaving it a lease; another worker's jobs (one of the same name in another container
    included: another start), and live processes, are left alone."""
    import subprocess
    import sys

    from workers.presence import _process_alive

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid, live_pid = int(gone.stdout), os.getpid()
    assert not _process_alive(dead_pid) and _process_alive(live_pid) and _process_alive(1)  # 1: not ours to signal
    ids = [_job(Session) for _ in range(5)]
    with Session() as session:
        claim = {"lease_seconds": 30, "max_attempts": 3, "instance": "this-start"}
        jobs.claim_job(session, job_id=ids[0], worker="w", pid=dead_pid, **claim)
        jobs.claim_job(session, job_id=ids[1], worker="w", pid=live_pid, **claim)
        jobs.claim_job(session, job_id=ids[2], worker="other", pid=dead_pid, **claim)
        jobs.claim_job(session, job_id=ids[3], worker="w", pid=dead_pid, **claim)
        jobs.claim_job(session, job_id=ids[4], worker="w", pid=dead_pid, **{**claim, "instance": "twin"})
        session.get(Job, ids[3]).memory_peak = 0.95  # it held its memory when it died
        session.commit()
    with Session() as session:
        taken = jobs.take_back_dead(
            session, worker="w", instance="this-start", process_alive=_process_alive, max_attempts=3, oom_fraction=0.9
        )
        session.commit()
        assert taken == [ids[0]]
        statuses = [jobs.get_job(session, job_id=job_id).status for job_id in ids]
        assert statuses == ["queued", "running", "running", "failed", "running"]
        assert jobs.get_job(session, job_id=ids[3]).reason == "out_of_memory"
        lost = [e for e in jobs.get_job(session, job_id=ids[0]).events if e.reason == "worker_lost"]
        assert lost[0].detail["died"] == dead_pid
        said = [line.message for line in job_logs.read(session, job_id=ids[0])]
        assert said == [
            f"attempt 1 lost: its training process ({dead_pid}) on w died; "
            "the job goes back to the queue and resumes from its last saved state"
        ]
        assert jobs.claim_job(session, job_id=ids[0], worker="w", pid=live_pid, **claim).attempt == 2
        session.commit()
    with Session() as session:  # the attempt it saw die is no longer the job's: the new one is left
        died = jobs.Died(attempt=1, pid=dead_pid)
        assert jobs.reap_one(session, job_id=ids[0], max_attempts=3, died=died) is None
        assert jobs.get_job(session, job_id=ids[0]).status == "running"


def test_attempts_a_worker_shutdown_handed_back_do_not_count_toward_the_limit(Session):
    job_id = _job(Session)
    future = utcnow() + timedelta(hours=1)
    stopped = {"max_attempts": None, "reason": jobs.WORKER_STOPPED, "error": "shut down", "send_again_soon": True}
    with Session() as session:
        for attempt in (1, 2):  # two shutdowns, then a lost worker: one counted attempt of 2
            assert jobs.claim_job(session, job_id=job_id, worker="w", **LEASE).attempt == attempt
            assert jobs.give_back(session, job_id=job_id, attempt=attempt, **stopped) == JobStatus.QUEUED
            ((queued, sent),) = jobs.queued_dispatches(session, sent_before=utcnow())
            assert queued == job_id and sent < utcnow() - timedelta(hours=1)
        assert jobs.claim_job(session, job_id=job_id, worker="w", **LEASE).attempt == 3
        assert jobs.reap_one(session, job_id=job_id, cutoff=future, max_attempts=2) == JobStatus.QUEUED
        assert jobs.claim_job(session, job_id=job_id, worker="w", **LEASE).attempt == 4
        assert jobs.reap_one(session, job_id=job_id, cutoff=future, max_attempts=2) == JobStatus.FAILED
        session.commit()
        assert "lost 2 times (limit 2)" in jobs.get_job(session, job_id=job_id).error


def test_a_resume_gives_a_job_that_ran_out_of_attempts_the_whole_limit_again(Session):
    job_id = _job(Session)
    future = utcnow() + timedelta(hours=1)
    with Session() as session:
        for attempt in (1, 2):  # lost twice: failed at the limit of 2
            assert jobs.claim_job(session, job_id=job_id, worker="w", **LEASE).attempt == attempt
            jobs.reap_one(session, job_id=job_id, cutoff=future, max_attempts=2)
        assert jobs.get_job(session, job_id=job_id).status == JobStatus.FAILED
        jobs.request_resume(session, job_id=job_id)
        assert jobs.claim_job(session, job_id=job_id, worker="w", **LEASE).attempt == 3
        assert jobs.reap_one(session, job_id=job_id, cutoff=future, max_attempts=2) == JobStatus.QUEUED
        assert jobs.claim_job(session, job_id=job_id, worker="w", **LEASE).attempt == 4
        assert jobs.reap_one(session, job_id=job_id, cutoff=future, max_attempts=2) == JobStatus.FAILED
        session.commit()
        assert "lost 2 times (limit 2)" in jobs.get_job(session, job_id=job_id).error


def test_a_cancel_that_came_while_an_attempt_stopped_wins_over_its_give_back(Session):
    job_id = _job(Session)
    with Session() as session:
        jobs.claim_job(session, job_id=job_id, worker="w", **LEASE)
        jobs.request_cancel(session, job_id=job_id)
        given_back = jobs.give_back(
            session, job_id=job_id, attempt=1, max_attempts=None, reason=jobs.WORKER_STOPPED, error="shut down"
        )
        session.commit()
        job = jobs.get_job(session, job_id=job_id)
        assert given_back == JobStatus.CANCELLED and (job.status, job.reason) == ("cancelled", "user_cancelled")


def test_a_fresh_lease_is_not_reaped(Session):
    job_id = _job(Session)
    with Session() as session:
        jobs.claim_job(session, job_id=job_id, worker="w", **LEASE)
        assert jobs.reap_one(session, job_id=job_id, cutoff=utcnow() - timedelta(seconds=30), max_attempts=3) is None
        assert jobs.expired_leases(session, cutoff=utcnow() - timedelta(seconds=30)) == []


def test_an_unknown_job_is_not_found(Session):
    with Session() as session:
        assert jobs.get_job(session, job_id="no-such-job") is None
        with pytest.raises(NotFound, match="job no-such-job not found"):
            jobs.require_job(session, job_id="no-such-job")


def _job_with_epochs(spec: dict, task: str = "classification"):
    """A job object (not stored) with three checkpoints: validation accuracy best at epoch 1,
    test accuracy best at epoch 2, the last at epoch 3."""
    from service.core.tables import Checkpoint, Job

    metrics = [
        {"val_acc": 0.9, "test_acc": 0.5, "test_loss": 2.0},
        {"val_acc": 0.6, "test_acc": 0.95, "test_loss": 0.1},
        {"val_acc": 0.7, "test_acc": 0.6, "test_loss": 1.0},
    ]
    return Job(
        spec=spec,
        task=task,
        checkpoints=[Checkpoint(epoch=i + 1, path="x", size_bytes=1, metrics=m) for i, m in enumerate(metrics)],
    )


@pytest.mark.parametrize(
    ("data", "stopping", "epoch", "selected_on"),
    [
        ({"val_fraction": 0.2}, None, 1, "val_acc"),  # a validation split: chosen on it
        ({}, None, 3, "last_epoch"),  # no validation: the last epoch, never the best test result
        ({}, {"metric": "test_loss"}, 2, "test_loss"),  # early stopping on a test metric was asked for
    ],
)
def test_best_is_chosen_on_validation_never_silently_on_test(data, stopping, epoch, selected_on):
    spec = {"data": {"dataset": "fashion-mnist", **data}, **({"early_stopping": stopping} if stopping else {})}
    job = _job_with_epochs(spec)
    assert jobs.best_checkpoint(job).epoch == epoch
    assert jobs.best_selected_on(job) == selected_on


def test_a_tie_on_accuracy_goes_to_the_lower_loss_then_the_earlier_epoch():
    from service.core.tables import Checkpoint, Job

    def best(*metrics):
        job = Job(
            spec={"data": {"dataset": "fashion-mnist", "val_fraction": 0.1}},
            task="classification",
            checkpoints=[Checkpoint(epoch=i + 1, path="x", size_bytes=1, metrics=m) for i, m in enumerate(metrics)],
        )
        return jobs.best_checkpoint(job).epoch

    assert best({"val_acc": 0.8}, {"val_acc": 1.0, "val_loss": 0.79}, {"val_acc": 1.0, "val_loss": 0.43}) == 3
    assert best({"val_acc": 1.0, "val_loss": 0.5}, {"val_acc": 1.0, "val_loss": 0.5}) == 1
    assert best({"val_acc": 1.0}, {"val_acc": 1.0, "val_loss": 0.4}) == 2  # a loss beats none


@pytest.mark.parametrize(
    ("peak", "status", "reason"),
    [
        (0.95, JobStatus.FAILED, "out_of_memory"),  # lost while near its memory: killed for it, not retried
        (0.30, JobStatus.QUEUED, "worker_lost"),  # lost for another reason: retried
        (None, JobStatus.QUEUED, "worker_lost"),  # its worker never said
    ],
)
def test_a_lost_attempt_near_its_memory_limit_is_out_of_memory_and_not_retried(Session, peak, status, reason):
    with Session() as session:
        job_id = jobs.create_job(session, spec=SPEC, task="classification").id
        session.commit()
    with Session() as session:
        attempt = jobs.claim_job(session, job_id=job_id, worker="w", **LEASE).attempt
        jobs.heartbeat(session, job_id=job_id, attempt=attempt, memory_peak=peak)
        session.commit()
    with Session() as session:
        assert (
            jobs.reap_one(
                session, job_id=job_id, cutoff=utcnow() + timedelta(seconds=1), max_attempts=3, oom_fraction=0.9
            )
            == status
        )
        session.commit()
        job = jobs.get_job(session, job_id=job_id)
        assert job.status == status and job.events[-1].reason == reason
        if reason == "out_of_memory":
            assert "95% of its memory budget" in job.error


@pytest.mark.parametrize(
    "keep, kept",
    [("best_and_last", [2, 5]), ("all", [1, 2, 3, 4, 5]), (2, [4, 5]), (1, [5])],
)
def test_the_checkpoint_policy_drops_what_it_does_not_keep(Session, keep, kept):
    """Validation accuracy peaks at epoch 2; the last epoch is 5."""
    spec = JobSpec.model_validate(
        {**SPEC.model_dump(mode="json"), "epochs": 5, "data": {"dataset": "fashion-mnist", "val_fraction": 0.2}}
        | {"checkpoints": {"keep": keep}}
    )
    with Session() as session:
        job_id = jobs.create_job(session, spec=spec, task="classification").id
        jobs.claim_job(session, job_id=job_id, worker="w", **LEASE)
        session.commit()
    for epoch, accuracy in zip(range(1, 6), (0.5, 0.9, 0.6, 0.7, 0.8), strict=True):
        with Session() as session:
            jobs.record_epoch(
                session,
                job_id=job_id,
                attempt=1,
                metrics={"epoch": epoch, "val_acc": accuracy, "val_loss": 1 - accuracy},
                checkpoint=StoredFile(f"checkpoints/{job_id}/epoch-{epoch:04d}.safetensors", 10, "a" * 64),
            )
            dropped = jobs.drop_checkpoints(session, job_id=job_id)
            session.commit()
            assert all(f.key.startswith(f"checkpoints/{job_id}/epoch-") for f in dropped)
    with Session() as session:
        job = jobs.get_job(session, job_id=job_id)
        assert [c.epoch for c in job.checkpoints] == kept
        assert jobs.held_bytes(job) == 10 * len(kept)


@pytest.mark.parametrize("keep", [0, -1, "best", 2.5, True])
def test_a_checkpoint_policy_that_is_not_one_is_refused(keep):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="checkpoints.keep"):
        JobSpec.model_validate({**SPEC.model_dump(mode="json"), "checkpoints": {"keep": keep}})


def test_a_later_attempt_names_its_own_file_and_gets_the_one_it_replaced(Session):
    with Session() as session:
        job_id = jobs.create_job(session, spec=SPEC, task="classification").id
        jobs.claim_job(session, job_id=job_id, worker="w", **LEASE)
        first = StoredFile(f"checkpoints/{job_id}/epoch-0001.safetensors", 10, "a" * 64)
        assert jobs.record_epoch(session, job_id=job_id, attempt=1, metrics={"epoch": 1}, checkpoint=first) is None
        session.commit()
    with Session() as session:
        session.execute(update(Job).where(Job.id == job_id).values(attempt=2))
        again = StoredFile(f"checkpoints/{job_id}/epoch-0001.attempt-2.safetensors", 11, "b" * 64)
        assert jobs.record_epoch(session, job_id=job_id, attempt=2, metrics={"epoch": 1}, checkpoint=again) == first
        session.commit()
        assert [c.file for c in jobs.get_job(session, job_id=job_id).checkpoints] == [again]


def test_old_specs_keep_every_checkpoint_and_no_epoch_another_job_starts_from_is_dropped(Session):
    with Session() as session:
        job_id = jobs.create_job(session, spec=SPEC, task="classification").id
        jobs.claim_job(session, job_id=job_id, worker="w", **LEASE)
        for epoch in (1, 2, 3):
            checkpoint = StoredFile(f"checkpoints/{job_id}/epoch-{epoch:04d}.safetensors", 10, "a" * 64)
            jobs.record_epoch(session, job_id=job_id, attempt=1, metrics={"epoch": epoch}, checkpoint=checkpoint)
        old = {k: v for k, v in SPEC.model_dump(mode="json").items() if k != "checkpoints"}
        session.execute(update(Job).where(Job.id == job_id).values(spec=old))  # recorded before the policy
        session.commit()
        assert jobs.drop_checkpoints(session, job_id=job_id) == []
        session.execute(update(Job).where(Job.id == job_id).values(spec=SPEC.model_dump(mode="json")))
        starter = {**SPEC.model_dump(mode="json"), "init_from": {"job_id": job_id[:8], "checkpoint": 1}}
        jobs.create_job(session, spec=JobSpec.model_validate(starter), task="classification")  # queued
        session.commit()
        dropped = jobs.drop_checkpoints(session, job_id=job_id)
        assert [f.key.rsplit("/", 1)[1] for f in dropped] == ["epoch-0002.safetensors"]  # 1 is needed, 3 is last


def test_a_heartbeat_says_what_its_worker_waits_for_until_a_beat_or_a_transition_says_otherwise(Session):
    from service.core import worker_registry
    from service.core.settings import get_settings

    said = "the store s3://b/p is unavailable (cannot be reached): the worker has retried it since 12:00:00 UTC"
    with Session() as session:
        job_id = jobs.create_job(session, spec=SPEC, task="classification").id
        attempt = jobs.claim_job(session, job_id=job_id, worker="w", **LEASE).attempt
        session.commit()

    def beat(stalled, said_before=None):
        with Session() as session:
            status = jobs.heartbeat(session, job_id=job_id, attempt=attempt, stalled=stalled, said_before=said_before)
            assert status == JobStatus.RUNNING
            session.commit()

    def waiting() -> tuple:
        with Session() as session:
            job = session.get(Job, job_id)
            reasons = worker_registry.waiting_reasons(session, jobs=[job], settings=get_settings())
            return job.stalled, reasons.get(job_id)

    beat(said)
    assert waiting() == (said, worker_registry.STORE_UNAVAILABLE)
    beat(None)  # a beat that says nothing, its worker having said nothing before: another's word stays
    assert waiting() == (said, worker_registry.STORE_UNAVAILABLE)
    beat(None, said_before=said)
    assert waiting() == (None, None)
    beat(said)
    with Session() as session:
        jobs.request_cancel(session, job_id=job_id)
        session.commit()
    assert waiting() == (None, None)  # a transition clears it; the next beat would say it again
