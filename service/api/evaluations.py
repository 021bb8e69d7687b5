"""Evaluation reports: the checkpoint `job:<id>` names, served by the ModelServer, run over the
job's test set once per checkpoint file, kept in SQL (service/core/evaluation_reports.py) and
remembered."""

from __future__ import annotations

import logging
import threading
from typing import NamedTuple

from fastapi.concurrency import run_in_threadpool

from models.cache import LRU
from models.inference.evaluation import Evaluation
from service.api.gc_tuning import release_free_memory
from service.api.serving import LoadedModel, ModelServer, checkpoint_key
from service.core import datasets, evaluation_reports, jobs
from service.core.db import UNAVAILABLE, brief, session_scope
from service.core.errors import NotFound, Unprocessable
from service.core.references import ResolvedCheckpoint
from service.core.tables import Job

log = logging.getLogger(__name__)

MAX_MISTAKES = 100  # mistakes a report keeps (its route's `limit` is at most this)


class Evaluated(NamedTuple):
    target: ResolvedCheckpoint
    loaded: LoadedModel
    report: Evaluation
    images: bool  # the mistakes have images to show: the model takes images, and its test set is here


class Evaluations:
    """The evaluation reports of one API process, computed with its ModelServer's models."""

    def __init__(self, server: ModelServer):
        self.server = server
        self._reports: LRU[Evaluation] = LRU(32)  # per checkpoint file
        # A report is a pass over a test set: one at a time, so that requests for the same one wait
        # for it instead of each computing it again.
        self._evaluating = threading.Lock()

    @staticmethod
    def _job(job_id: str) -> tuple[Job, NotFound | None]:
        """A job's record, read in a session of its own (call in a thread), and why its test set
        cannot be read here (None: it can); NotFound if there is no job."""
        with session_scope(write=False) as session:
            job = jobs.require_job(session, job_id=job_id)
        try:
            datasets.require_test_set(job)
        except NotFound as gone:
            return job, gone
        return job, None

    async def report(self, job_id: str) -> Evaluated:
        """The evaluation report (and confusion matrix) of the checkpoint `job:<id>` names, on the
        job's test set; Unprocessable unless the job classifies, NotFound if it was not kept and the
        test set is gone."""
        job, test_set_gone = await run_in_threadpool(self._job, job_id)
        if job.task != "classification":
            raise Unprocessable(
                f"job {job.id} is a {job.task} job; the evaluation report and the confusion "
                "matrix need a classification job"
            )
        target, loaded = await self.server.get(f"job:{job.id}")
        if target.file.sha256 is None and test_set_gone:
            # A file recorded before digests were has no kept report: none is served, by any
            # process, whatever one remembers.
            raise test_set_gone
        key = checkpoint_key(target)
        report = self._reports.get(key)
        if report is None:
            report = await run_in_threadpool(self._kept_or_computed, key, job, target, loaded, test_set_gone)
        return Evaluated(target, loaded, report, images=loaded.predictor.contract.images and not test_set_gone)

    def _kept_or_computed(
        self, key, job: Job, target: ResolvedCheckpoint, loaded: LoadedModel, test_set_gone: NotFound | None
    ) -> Evaluation:
        """The report SQL keeps for the checkpoint file, or one computed now and kept (call in a thread)."""
        sha256 = target.file.sha256  # None for a file recorded before digests were: not kept
        if sha256 is not None:
            with session_scope(write=False) as session:
                kept = evaluation_reports.kept_report(session, job_id=job.id, checkpoint_sha256=sha256)
            if kept is not None:
                return self._reports.put(key, kept)

        def compute() -> Evaluation:
            if test_set_gone:
                raise test_set_gone
            test = datasets.test_set(job, settings=self.server.settings)
            report = loaded.predictor.evaluate(test.x_test, test.y_test, mistakes=MAX_MISTAKES)
            del test  # its pages go with it, before the free memory is handed back
            release_free_memory()
            if sha256 is not None:
                try:
                    with session_scope() as session:
                        evaluation_reports.keep_report(session, job_id=job.id, checkpoint_sha256=sha256, report=report)
                except UNAVAILABLE as exc:  # answered all the same; a later request keeps it
                    log.warning("could not keep job %s's evaluation report: %s", job.id, brief(exc))
            return report

        with self._evaluating:
            return self._reports.get_or_load(key, compute)
