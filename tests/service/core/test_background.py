"""Periodic work on a background thread survives a step that fails."""

from __future__ import annotations

import logging
import threading

from service.core.background import Periodic


class FailsOnce(Periodic):
    def __init__(self):
        super().__init__("fails-once", 0.01, at_start=True)
        self.ticks = 0
        self.third = threading.Event()

    def tick(self) -> None:
        self.ticks += 1
        if self.ticks == 1:
            raise OSError("the disk was away")
        if self.ticks == 3:
            self.third.set()


def test_a_tick_that_raises_is_logged_and_the_next_one_still_comes(caplog):
    with caplog.at_level(logging.ERROR, logger="service.core.background"), FailsOnce() as periodic:
        assert periodic.third.wait(10), f"only {periodic.ticks} tick(s)"
    assert "fails-once: a periodic step failed; trying again in 0.01 s" in caplog.text
    assert "OSError: the disk was away" in caplog.text
