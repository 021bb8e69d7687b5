"""Evaluation reports kept in SQL, on the embedded database and on PostgreSQL."""

from __future__ import annotations

import torch
from sqlalchemy import func, select

from models.inference.evaluation import evaluate, report_json
from models.spec.job import JobSpec
from service.core import db, jobs
from service.core.evaluation_reports import REPORT_FORM, keep_report, kept_report
from service.core.tables import EvaluationReport, Job

SHA = "ab" * 32


def a_report(seed: int):
    generator = torch.Generator().manual_seed(seed)
    probabilities = torch.rand(50, 3, generator=generator).softmax(dim=1)
    return evaluate(probabilities, torch.randint(0, 3, (50,), generator=generator), ["a", "b", "c"])


def a_job() -> str:
    spec = JobSpec.model_validate(
        {"model": {"arch": "softmax_regression"}, "data": {"dataset": "fashion-mnist"}, "epochs": 1}
    )
    with db.session_scope() as session:
        return jobs.create_job(session, spec=spec, task="classification").id


def count() -> int:
    with db.session_scope(write=False) as session:
        return session.scalar(select(func.count()).select_from(EvaluationReport))


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
