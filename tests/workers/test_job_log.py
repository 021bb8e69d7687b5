"""A job's log capture in-process: what it keeps, what it drops, and that warnings count."""

from __future__ import annotations

import logging
import warnings

from models.spec.job import JobSpec
from service.core import db, job_logs, jobs
from workers.job_log import JobLogCapture

SPEC = JobSpec.model_validate({"model": {"arch": "mlp"}, "data": {"dataset": "fashion-mnist"}})


def test_lines_warnings_and_errors_are_kept_within_the_limit(service_env, caplog):
    caplog.set_level(logging.INFO, logger="botocore.credentials")  # as a worker logs: from INFO up
    with db.session_scope() as session:
        job_id = jobs.create_job(session, spec=SPEC, task="classification").id
    log = logging.getLogger("workers.runner")
    with JobLogCapture(job_id, attempt=2, limit=5) as capture:
        log.info("first")
        logging.getLogger("botocore.credentials").info("Found credentials in environment variables.")
        warnings.warn("a deprecated thing", UserWarning, stacklevel=1)
        capture.store()
        for i in range(10):
            log.info("line %d", i)
        logging.getLogger("sqlalchemy.engine").warning("plumbing")  # not the job's
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log.exception("job failed")
    log.info("after the job")  # not captured any more
    with db.session_scope(write=False) as session:
        lines = job_logs.read(session, job_id=job_id)
    messages = [line.message for line in lines]
    assert messages[:2] == ["first", messages[1]] and "a deprecated thing" in messages[1]
    assert lines[1].level == "WARNING" and lines[1].logger == "py.warnings"
    assert messages[2:5] == ["line 0", "line 1", "line 2"]
    assert lines[5].level == "ERROR" and "Traceback (most recent call last)" in messages[5] and "boom" in messages[5]
    assert messages[6] == "7 more line(s) were not kept (limit 5 a run)"
    assert len(lines) == 7 and {line.attempt for line in lines} == {2}
    assert "plumbing" not in messages and "after the job" not in messages
    assert not any("credentials" in message for message in messages)
