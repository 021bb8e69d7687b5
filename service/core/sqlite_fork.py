"""A fork waits until no other thread of the process holds an SQLite connection.

SQLite keeps the locks of each database a process has open in process-wide memory, shared by all
its connections to that file. A child forked while another thread of its parent was inside a write
transaction inherits that memory saying the write lock is held, by a thread the child does not
have: every write the child makes, on any connection it opens, waits out the busy timeout and
answers "database is locked", for as long as it lives (while the kernel, which holds no such lock,
lets every other process write). A worker's main process renews its registry entry from a thread
while Celery forks a pool process to replace one that died, so on the embedded database a killed
or out-of-memory pool process could leave its worker unable to record anything.

Here, every SQLAlchemy pool's checkouts of an sqlite3 connection are counted per thread, and
os.fork() (Celery's pool, DataLoader workers; not subprocess, which runs no fork hooks) first waits
until the threads other than the forking one hold none, holding back their new checkouts meanwhile.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections import Counter

from sqlalchemy import event
from sqlalchemy.pool import Pool

log = logging.getLogger(__name__)

# Longer than any transaction of ours takes; a checkout that waits out the busy timeout (30 s) on
# another process's write lock may hold it longer: past this the fork goes ahead, with a warning.
WAIT_SECONDS = 10.0
_HOLDER = "trainyard_fork_gate_holder"


class ForkGate:
    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._held: Counter[int] = Counter()  # thread id -> SQLite connections checked out
        self._forking: int | None = None  # the thread that waits to fork
        self._generation = 0  # forks this process's memory has been through: a child's counts start again

    def checked_out(self, dbapi_connection, record, _proxy) -> None:
        if not isinstance(dbapi_connection, sqlite3.Connection):
            return
        me = threading.get_ident()
        with self._changed:
            # A thread that holds one already goes on: the fork waits for it to give them back.
            while self._forking not in (None, me) and not self._held[me]:
                self._changed.wait()
            self._held[me] += 1
            record.info[_HOLDER] = (me, self._generation)

    def checked_in(self, _dbapi_connection, record) -> None:
        with self._changed:
            holder, generation = record.info.pop(_HOLDER, (None, None)) if record is not None else (None, None)
            if holder is None or generation != self._generation or not self._held[holder]:
                return  # not counted, or counted in the parent before this process was forked
            self._held[holder] -= 1
            if not self._held[holder]:
                del self._held[holder]
            self._changed.notify_all()

    def before_fork(self) -> None:
        me = threading.get_ident()
        deadline = time.monotonic() + WAIT_SECONDS
        with self._changed:
            while self._forking is not None:  # another thread is forking: one at a time
                self._changed.wait()
            self._forking = me
            while others := [thread for thread in self._held if thread != me]:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
            mine = self._held[me]
        if others:
            log.warning(
                "forking while %d other thread(s) hold an SQLite connection: the child may find the database locked",
                len(others),
            )
        if mine:  # waiting for itself would never end
            log.warning("forking while holding %d SQLite connection(s): the child may find the database locked", mine)

    def after_fork_in_parent(self) -> None:
        with self._changed:
            self._forking = None
            self._changed.notify_all()

    def after_fork_in_child(self) -> None:
        # The child has only the forking thread, and the connections it holds belong to the parent.
        self._changed = threading.Condition()
        self._held = Counter()
        self._forking = None
        self._generation += 1


GATE = ForkGate()
event.listen(Pool, "checkout", GATE.checked_out)
event.listen(Pool, "checkin", GATE.checked_in)
os.register_at_fork(
    before=GATE.before_fork, after_in_parent=GATE.after_fork_in_parent, after_in_child=GATE.after_fork_in_child
)
