"""Evaluation reports kept in SQL, one per job checkpoint file (by its sha256): the API process
asked first computes a report, and every process then answers it, also once the job's test set is
gone (an upload deleted since)."""

from __future__ import annotations

import logging

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models.inference.evaluation import Evaluation, report_from_json, report_json
from service.core.tables import EvaluationReport

log = logging.getLogger(__name__)


def kept_report(session: Session, *, job_id: str, checkpoint_sha256: str) -> Evaluation | None:
    """The report kept for a job's checkpoint file, if one is (and in a form this version reads)."""
    row = session.get(EvaluationReport, (job_id, checkpoint_sha256))
    if row is None:
        return None
    try:
        return report_from_json(row.report)
    except ValueError as exc:
        log.warning("the evaluation report kept for job %s is computed again: %s", job_id, exc)
        return None


def keep_report(session: Session, *, job_id: str, checkpoint_sha256: str, report: Evaluation) -> None:
    """Keep a report computed for a job's checkpoint file. Another process that kept one first, or
    the job's deletion meanwhile, leaves things as they are."""
    row = session.get(EvaluationReport, (job_id, checkpoint_sha256))
    if row is None:
        session.add(EvaluationReport(job_id=job_id, checkpoint_sha256=checkpoint_sha256, report=report_json(report)))
    else:
        row.report = report_json(report)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
