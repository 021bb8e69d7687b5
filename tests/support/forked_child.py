"""A child for the supervisor's tests, run from a fork server as `python -m` would run it: it says
its pid, whether its fork server (its parent) preloaded tests.support.forked_preload and its TEST_MARK, then
sleeps until it is stopped or its supervisor is gone."""

import os
import sys
import time

from service.core.background import stop_when_orphaned

if __name__ == "__main__":
    stop_when_orphaned(interval=0.1)
    preload = sys.modules.get("tests.support.forked_preload")
    preloaded = preload is not None and preload.IMPORTED_IN == os.getppid()  # by the fork server
    print("forked", os.getpid(), os.getppid(), preloaded, os.environ.get("TEST_MARK"), flush=True)
    time.sleep(3600)
