"""Periodic work on a background thread survives a step that fails."""

from __future__ import annotations

import logging
import threading

from service.core.background import Periodic


class FailsTwice(Periodic):
    def __init__(self):
        super().__init__("fails-twice", 0.01, at_start=True)
        self.ticks = 0
        self.fourth = threading.Event()

    def tick(self) -> None:
        self.ticks += 1
        if self.ticks <= 2:
            raise OSError("the disk was away")
        if self.ticks == 4:
            self.fourth.set()


def test_a_tick_that_raises_is_logged_and_the_next_one_still_comes(caplog):
    with caplog.at_level(logging.WARNING, logger="service.core.background"), FailsTwice() as periodic:
        assert periodic.fourth.wait(10), f"only {periodic.ticks} tick(s)"
    first, second = caplog.records
    assert first.getMessage() == "fails-twice: a periodic step failed; trying again in 0.01 s"
    assert first.exc_info is not None and "OSError: the disk was away" in caplog.text
    assert second.getMessage() == "fails-twice: the periodic step failed again (2 in a row): the disk was away"
    assert second.exc_info is None
