"""The metadata thread: order, the first failure raised in the caller, a bounded backlog."""

from __future__ import annotations

import threading
import time

import pytest

from wicked_dr.engine.background import Background


def test_jobs_run_in_submission_order_on_another_thread() -> None:
    background = Background("test")
    seen: list[tuple[int, str]] = []
    for i in range(50):
        background.submit(lambda i=i: seen.append((i, threading.current_thread().name)))
    background.wait()
    assert [i for i, _ in seen] == list(range(50))
    assert {name for _, name in seen} == {"test"}
    background.close()


def test_first_failure_is_raised_by_wait_and_later_jobs_are_skipped() -> None:
    background = Background("test")
    ran: list[int] = []

    def fail() -> None:
        raise ValueError("disk full")

    background.submit(ran.append, 1)
    background.submit(fail)
    background.submit(ran.append, 2)  # depends on the failed one: must not run
    with pytest.raises(ValueError, match="disk full"):
        background.wait()
    assert ran == [1]
    background.submit(ran.append, 3)  # the error was reported: work goes on
    background.wait()
    assert ran == [1, 3]
    background.close()


def test_submit_blocks_while_the_backlog_is_full() -> None:
    """A thread that falls behind holds the caller back instead of piling up work."""
    background = Background("test", backlog=2)
    release = threading.Event()
    background.submit(release.wait)  # the thread is busy with this one
    time.sleep(0.05)
    background.submit(lambda: None)
    background.submit(lambda: None)  # backlog full now
    submitted = threading.Event()

    def submit_third() -> None:
        background.submit(lambda: None)
        submitted.set()

    threading.Thread(target=submit_third, daemon=True).start()
    assert not submitted.wait(0.2)
    release.set()
    assert submitted.wait(5)
    background.wait()
    background.close()
