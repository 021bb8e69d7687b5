"""The reaper in-process against the embedded broker: lost workers and lost messages."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from models.spec.job import JobSpec
from service.core import broker, db, jobs, worker_registry
from service.core.reaper import SETTLE_SECONDS, lost_messages, sweep
from service.core.tables import Job, JobStatus, utcnow

SPEC = JobSpec.model_validate({"model": {"arch": "mlp"}, "data": {"dataset": "fashion-mnist"}})


def new_job() -> str:
    with db.session_scope() as session:
        return jobs.create_job(session, spec=SPEC, task="classification").id


def backdate(job_id: str, **columns) -> None:
    with db.session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(**columns))


def read(job_id: str) -> Job:
    with db.session_scope(write=False) as session:
        return jobs.require_job(session, job_id=job_id)


def test_lost_messages_are_the_stale_jobs_of_a_queue_short_of_messages():
    assert lost_messages(["a", "b"], settled=2, depth=2) == []
    assert lost_messages(["a", "b"], settled=2, depth=3) == []
    assert lost_messages(["a", "b"], settled=2, depth=1) == ["a", "b"]  # which one is lost is unknowable: send both
    assert lost_messages(["a"], settled=3, depth=2) == ["a"]  # two newer ones hold the two messages, or may
    assert lost_messages([], settled=3, depth=2) == []  # a newer one lost: sent when it is stale


def test_a_job_whose_worker_died_is_queued_again_and_sent(service_env):
    job_id = new_job()
    with db.session_scope() as session:
        jobs.claim_job(session, job_id=job_id, worker="gone", lease_seconds=30, max_attempts=3)
    backdate(job_id, heartbeat_at=utcnow() - timedelta(seconds=service_env.lease_seconds + 5))
    assert sweep(service_env) == [job_id]
    job = read(job_id)
    assert (job.status, job.reason, job.attempt) == (JobStatus.QUEUED, "worker_lost", 1)
    assert broker.queue_depth(service_env.queue) == 1


def test_a_queued_job_whose_message_was_lost_is_sent_once_more(service_env):
    job_id = new_job()  # created in SQL, but never published: as if the broker lost it
    assert sweep(service_env) == []  # too recent to judge
    backdate(job_id, dispatched_at=utcnow() - timedelta(seconds=service_env.resend_after_seconds + 5))
    assert sweep(service_env) == [job_id]
    assert broker.queue_depth(service_env.queue) == 1
    assert sweep(service_env) == []  # sent just now: not again
    assert read(job_id).status == JobStatus.QUEUED


def test_a_lost_message_is_sent_again_while_newer_jobs_fill_the_queue(service_env):
    """A newer job's message in the queue does not hide an older job's lost one; a job committed
    a moment ago, its message not yet published, does not make the reaper send the others again."""
    waiting = new_job()
    broker.send_train_job(waiting, service_env.queue)
    backdate(waiting, dispatched_at=utcnow() - timedelta(seconds=service_env.resend_after_seconds + 5))
    new_job()  # committed just now; its message is on its way
    assert sweep(service_env) == []
    lost = new_job()
    backdate(lost, dispatched_at=utcnow() - timedelta(seconds=service_env.resend_after_seconds + 5))
    newer = new_job()
    broker.send_train_job(newer, service_env.queue)
    backdate(newer, dispatched_at=utcnow() - timedelta(seconds=SETTLE_SECONDS + 5))  # settled, not stale
    assert sorted(sweep(service_env)) == sorted([waiting, lost])


def test_a_job_no_live_worker_can_give_its_processes_is_not_sent_until_one_can(service_env):
    spec = JobSpec.model_validate({**SPEC.model_dump(), "batch_size": 64, "distributed": {"nproc_per_node": 4}})
    with db.session_scope() as session:
        job_id = jobs.create_job(session, spec=spec, task="classification").id
    backdate(job_id, dispatched_at=utcnow() - timedelta(seconds=service_env.resend_after_seconds + 5))
    cpu = {"devices": [{"name": "cpu", "kind": "cpu", "memory_bytes": None}], "torch": "2", "cuda": None}
    for name, processes in (("two", 2), ("four", 4)):
        with db.session_scope() as session:
            worker_registry.register(
                session,
                worker_id=name,
                host="h",
                pid=1,
                queues=[service_env.queue],
                description=cpu,
                processes=processes,
            )
        if processes == 2:
            assert sweep(service_env) == []  # every worker would refuse it
    assert sweep(service_env) == [job_id]  # a worker that gives 4 is live now


def test_a_healthy_running_job_is_left_alone(service_env):
    job_id = new_job()
    with db.session_scope() as session:
        jobs.claim_job(session, job_id=job_id, worker="alive", lease_seconds=30, max_attempts=3)
    assert sweep(service_env) == []
    assert read(job_id).status == JobStatus.RUNNING and broker.queue_depth(service_env.queue) == 0


def test_the_reaper_launches_a_sweeps_next_trial_when_a_slot_is_free(service_env):
    from models.spec.sweeps import SweepSpec
    from service.core import sweeps

    request = SweepSpec(
        name="s",
        base={"model": {"arch": "mlp"}, "data": {"dataset": "fashion-mnist"}},
        grid={"optimizer.lr": [0.1, 0.2, 0.3]},
        max_parallel=1,
    )
    with db.session_scope() as session:
        sweep_id = sweeps.create(session, sweep=request, settings=service_env).sweep.id
    with db.session_scope(write=False) as session:
        (first,) = [t.job.id for t in sweeps.trials(session, sweeps.require(session, sweep_id=sweep_id)) if t.job]
    sweep(service_env)
    with db.session_scope(write=False) as session:
        assert sweeps.require(session, sweep_id=sweep_id).launched == 1  # its one slot is taken
    with db.session_scope() as session:
        jobs.request_cancel(session, job_id=first)  # queued: cancelled at once, the slot is free
    sweep(service_env)
    with db.session_scope(write=False) as session:
        record = sweeps.require(session, sweep_id=sweep_id)
        launched = [t for t in sweeps.trials(session, record) if t.job]
        assert record.launched == 2 and {t.params["optimizer.lr"] for t in launched} == {0.1, 0.2}
    assert broker.queue_depth(service_env.queue) == 2  # each launched trial's message went out


def test_a_reaper_on_a_database_never_migrated_says_so_once_without_a_traceback(service_env, caplog):
    """An API on an empty database logged the reaper's traceback every few seconds, never 'migrate'."""
    import logging

    from sqlalchemy import text

    from service.core import db
    from service.core.reaper import Reaper

    with db.get_engine().begin() as conn:
        conn.execute(text("DROP TABLE jobs"))  # as an empty database lacks it
    reaper = Reaper(service_env)
    with caplog.at_level(logging.WARNING, logger="service.core.reaper"):
        for _ in range(3):
            reaper.tick()
    said = [r for r in caplog.records if r.name == "service.core.reaper"]
    assert len(said) == 1 and not said[0].exc_info, said
    assert "run `trainyard migrate`" in said[0].getMessage()
