"""Evaluation reports: the checkpoint `job:<id>` names, served by the ModelServer, run over the
job's test set once per checkpoint file and remembered."""

from __future__ import annotations

import threading

from fastapi.concurrency import run_in_threadpool

from models.cache import LRU
from models.inference.evaluation import Evaluation
from service.api.gc_tuning import release_free_memory
from service.api.serving import LoadedModel, ModelServer, checkpoint_key
from service.core import datasets, jobs
from service.core.db import session_scope
from service.core.errors import Unprocessable
from service.core.references import ResolvedCheckpoint
from service.core.tables import Job

MAX_MISTAKES = 100  # mistakes a report keeps (its route's `limit` is at most this)


class Evaluations:
    """The evaluation reports of one API process, computed with its ModelServer's models."""

    def __init__(self, server: ModelServer):
        self.server = server
        self._reports: LRU[Evaluation] = LRU(32)  # per checkpoint file
        # A report is a pass over a test set: one at a time, so that requests for the same one wait
        # for it instead of each computing it again.
        self._evaluating = threading.Lock()

    @staticmethod
    def _job(job_id: str) -> Job:
        """A job's record, read in a session of its own (call in a thread); NotFound if there is none."""
        with session_scope(write=False) as session:
            return jobs.require_job(session, job_id=job_id)

    async def report(self, job_id: str) -> tuple[ResolvedCheckpoint, LoadedModel, Evaluation]:
        """The evaluation report (and confusion matrix) of the checkpoint `job:<id>` names, on the
        job's test set, remembered per checkpoint file; Unprocessable unless the job classifies."""
        job = await run_in_threadpool(self._job, job_id)
        if job.task != "classification":
            raise Unprocessable(
                f"job {job.id} is a {job.task} job; the evaluation report and the confusion "
                "matrix need a classification job"
            )
        # Each API process remembers its own reports: without this, one that computed a report
        # before the upload was deleted would answer, and another not.
        await run_in_threadpool(datasets.require_test_set, job)
        target, loaded = await self.server.get(f"job:{job.id}")

        def compute() -> Evaluation:
            test = datasets.test_set(job, settings=self.server.settings)
            report = loaded.predictor.evaluate(test.x_test, test.y_test, mistakes=MAX_MISTAKES)
            del test  # its pages go with it, before the free memory is handed back
            release_free_memory()
            return report

        key = checkpoint_key(target)

        def once() -> Evaluation:
            with self._evaluating:
                return self._reports.get_or_load(key, compute)

        return target, loaded, await run_in_threadpool(once)
