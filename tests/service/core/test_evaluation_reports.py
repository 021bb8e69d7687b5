"""Evaluation reports kept in SQL, on the embedded database and on PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import torch
from sqlalchemy import func, select

from models.inference.evaluation import evaluate, report_json
from models.spec.job import JobSpec
from service.core import db, jobs, retention
from service.core.evaluation_reports import REPORT_FORM, keep_report, kept_report
from service.core.storage import StoredFile
from service.core.tables import EvaluationReport, Job, JobStatus, utcnow

SHA = "ab" * 32


def a_report(seed: int):
    generator = torch.Generator().manual_seed(seed)
    probabilities = torch.rand(50, 3, generator=generator).softmax(dim=1)
    return evaluate(probabilities, torch.randint(0, 3, (50,), generator=generator), ["a", "b", "c"])


def a_job(**spec) -> str:
    spec = JobSpec.model_validate(
        {"model": {"arch": "softmax_regression"}, "data": {"dataset": "fashion-mnist"}, "epochs": 1} | spec
    )
    with db.session_scope() as session:
        return jobs.create_job(session, spec=spec, task="classification").id


def count() -> int:
    with db.session_scope(write=False) as session:
        return session.scalar(select(func.count()).select_from(EvaluationReport))


def kept_for() -> set[str]:
    with db.session_scope(write=False) as session:
        return set(session.scalars(select(EvaluationReport.checkpoint_sha256)))


def test_a_report_is_kept_once_read_back_and_deleted_with_its_job(service_env_on):
    job_id = a_job()
    first, second = a_report(1), a_report(2)
    with db.session_scope() as session:
        keep_report(session, job_id=job_id, checkpoint_sha256=SHA, report=first)
    with db.session_scope(write=False) as session:
        assert kept_report(session, job_id=job_id, checkpoint_sha256=SHA) == first
        assert kept_report(session, job_id=job_id, checkpoint_sha256="cd" * 32) is None
    with db.session_scope() as session:  # another process computed it too: one row, as before
        keep_report(session, job_id=job_id, checkpoint_sha256=SHA, report=first)
    assert count() == 1

    for another_form in ({"form": REPORT_FORM, "accuracy": 0.5}, {**report_json(first), "form": REPORT_FORM - 1}):
        with db.session_scope() as session:
            session.get(EvaluationReport, (job_id, SHA)).report = another_form  # kept by another version
        with db.session_scope() as session:
            assert kept_report(session, job_id=job_id, checkpoint_sha256=SHA) is None
            keep_report(session, job_id=job_id, checkpoint_sha256=SHA, report=second)
    with db.session_scope(write=False) as session:
        assert kept_report(session, job_id=job_id, checkpoint_sha256=SHA) == second

    with db.session_scope() as session:
        session.delete(session.get(Job, job_id))
    assert count() == 0
    with db.session_scope() as session:  # a job deleted while its report was computed
        keep_report(session, job_id=job_id, checkpoint_sha256=SHA, report=first)
    assert count() == 0


def test_the_reports_of_checkpoints_a_job_drops_go_with_them(service_env_on):
    """Its checkpoint policy drops epoch 1's file once epoch 2's is recorded, a later attempt
    replaces epoch 2's, and retention drops the rest: no report stays for a file nothing can ask
    about."""
    job_id = a_job(epochs=2, checkpoints={"keep": 1})
    digests = {1: "e1" * 32, 2: "e2" * 32}
    with db.session_scope() as session:
        jobs.claim_job(session, job_id=job_id, worker="w", lease_seconds=30, max_attempts=3)
    for epoch, sha256 in digests.items():
        with db.session_scope() as session:
            checkpoint = StoredFile(f"checkpoints/{job_id}/epoch-{epoch:04d}.safetensors", 10, sha256)
            jobs.record_epoch(session, job_id=job_id, attempt=1, metrics={"epoch": epoch}, checkpoint=checkpoint)
        with db.session_scope() as session:  # evaluated while it trains
            keep_report(session, job_id=job_id, checkpoint_sha256=sha256, report=a_report(epoch))
        with db.session_scope() as session:
            jobs.drop_checkpoints(session, job_id=job_id)
    assert kept_for() == {digests[2]}
    with db.session_scope() as session:  # a later attempt trains epoch 2 again, into a file of its own
        session.get(Job, job_id).attempt = 2
    again = StoredFile(f"checkpoints/{job_id}/epoch-0002.attempt-2.safetensors", 10, "f2" * 32)
    with db.session_scope() as session:
        jobs.record_epoch(session, job_id=job_id, attempt=2, metrics={"epoch": 2}, checkpoint=again)
    assert kept_for() == set()
    with db.session_scope() as session:
        keep_report(session, job_id=job_id, checkpoint_sha256=again.sha256, report=a_report(3))

    service_env_on.retention_days = 1
    with db.session_scope() as session:
        session.get(Job, job_id).status = JobStatus.SUCCEEDED
        session.get(Job, job_id).finished_at = utcnow() - timedelta(days=2)
    assert retention.purge_expired(service_env_on) == [job_id]
    assert kept_for() == set()
