"""A worker whose store is not the service's takes no job: it says why and exits at its start
(service/core/storage/check.py says how it is told)."""

from __future__ import annotations

import logging

from celery.signals import worker_init

from service.core.background import EXIT_MISCONFIGURED
from service.core.db import UNAVAILABLE, brief
from service.core.storage import StorageUnavailable, get_storage
from service.core.storage.check import ask_store

log = logging.getLogger(__name__)


@worker_init.connect
def refuse_another_store(**_kwargs) -> None:
    storage = get_storage()
    try:
        problem = ask_store(storage.store)
    except UNAVAILABLE as error:
        log.warning("could not check this worker's store against the database yet: %s", brief(error))
        return
    except StorageUnavailable as error:
        log.warning("could not check this worker's store yet: %s", error)
        return
    except Exception:  # a check that cannot be made refuses nothing (a database not migrated yet, say)
        log.warning("could not check this worker's store", exc_info=True)
        return
    if problem:
        log.critical("%s", problem)
        raise SystemExit(EXIT_MISCONFIGURED)
    log.info("this worker's store is %s", storage.url)
