"""The loop watchdog reports a blocked loop with the loop thread's stack."""

from __future__ import annotations

import logging
import time

from rsocket.watchdog import LoopWatchdog

from .helpers import until


def block_the_loop_for(seconds: float) -> None:
    time.sleep(seconds)  # what a blocking handler does


async def test_a_blocked_loop_is_reported_with_its_stack(caplog):
    caplog.set_level(logging.WARNING, logger="rsocket.watchdog")
    watchdog = LoopWatchdog(interval=0.05, threshold=0.2)
    watchdog.start()
    try:
        await until(lambda: watchdog.beats >= 1, 5.0, "the first beat")
        block_the_loop_for(0.6)
        await until(lambda: watchdog.stalls >= 1, 5.0, "a beat that measures the lag")
    finally:
        watchdog.stop()
    assert watchdog.stalls == 1
    record = next(r for r in caplog.records if "event loop blocked" in r.getMessage())
    assert "block_the_loop_for" in record.stack and "time.sleep" in record.stack
    assert not watchdog.running


async def test_an_idle_loop_is_not_reported(caplog):
    watchdog = LoopWatchdog(interval=0.05, threshold=0.5)
    watchdog.start()
    watchdog.start()  # idempotent
    try:
        await until(lambda: watchdog.beats >= 6, 5.0, "six beats")
    finally:
        watchdog.stop()
        watchdog.stop()
    assert watchdog.stalls == 0
    assert not [r for r in caplog.records if "blocked" in r.getMessage()]
