"""Evaluation reports kept in SQL, one per job checkpoint file (by its sha256): the API process
asked first computes a report, and every process then answers it, also once the job's test set is
gone (an upload deleted since)."""

from __future__ import annotations

import logging

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models.inference.evaluation import Evaluation, report_from_json, report_json
from service.core.tables import Checkpoint, EvaluationReport

log = logging.getLogger(__name__)

# What a kept report was computed as (its fields, MAX_MISTAKES, the thresholds): one kept in another
# form is computed again.
REPORT_FORM = 1


def kept_report(session: Session, *, job_id: str, checkpoint_sha256: str) -> Evaluation | None:
    """The report kept for a job's checkpoint file, if one is (and in a form this version reads)."""
    row = session.get(EvaluationReport, (job_id, checkpoint_sha256))
    if row is None:
        return None
    try:
        if row.report.get("form") != REPORT_FORM:
            raise ValueError(f"it was kept in form {row.report.get('form')}, not {REPORT_FORM}")
        return report_from_json(row.report)
    except ValueError as exc:
        log.warning("the evaluation report kept for job %s is not served (it is computed again): %s", job_id, exc)
        return None


def keep_report(session: Session, *, job_id: str, checkpoint_sha256: str, report: Evaluation) -> None:
    """Keep a report computed for a job's checkpoint file. Another process that kept one first, or
    the job's deletion meanwhile, leaves things as they are."""
    kept = {"form": REPORT_FORM, **report_json(report)}
    row = session.get(EvaluationReport, (job_id, checkpoint_sha256))
    if row is None:
        session.add(EvaluationReport(job_id=job_id, checkpoint_sha256=checkpoint_sha256, report=kept))
    else:
        row.report = kept
    try:
        session.commit()
    except IntegrityError:
        session.rollback()


def forget_reports_of_dropped(session: Session, *, job_id: str) -> None:
    """Delete the reports of checkpoint files the job no longer has (its checkpoint policy or
    retention dropped them): nothing can ask for those again. In the caller's transaction."""
    session.flush()
    held = select(Checkpoint.sha256).where(Checkpoint.job_id == job_id, Checkpoint.sha256.is_not(None))
    session.execute(
        delete(EvaluationReport).where(
            EvaluationReport.job_id == job_id, EvaluationReport.checkpoint_sha256.not_in(held)
        )
    )
