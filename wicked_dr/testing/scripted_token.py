"""A cancel token that tells a test where the job is, so a test cancels at a known point.

Cancelling "after a while" is timing luck: on a slow machine the job has not got there yet,
on a fast one it is done. ``ScriptedToken`` is a real ``CancelToken`` that also records the
job's use of it: ``waiting`` is set when the job first waits on it (it is in a lock wait or a
settle wait now, so a cancel must end that wait), ``waits`` and ``checks`` count, and
``cancel_at_check=n`` cancels it at the job's n-th safe point.
"""

from __future__ import annotations

import threading

from wicked_dr.cancel import CancelToken


class ScriptedToken(CancelToken):
    """A ``CancelToken`` that records how the job uses it (see the module)."""

    def __init__(self, *, cancel_at_check: int | None = None) -> None:
        super().__init__()
        self.checks = 0
        self.waits = 0
        self.waiting = threading.Event()
        self._cancel_at_check = cancel_at_check

    def check(self, message: str = "interrupted") -> None:
        self.checks += 1
        if self._cancel_at_check is not None and self.checks >= self._cancel_at_check:
            self.cancel(f"test: safe point {self.checks}")
        super().check(message)

    def wait(self, seconds: float) -> bool:
        self.waits += 1
        self.waiting.set()
        return super().wait(seconds)
