"""Stopping work from outside: a cancellation token checked at safe points.

A signal handler that raises can only reach the main thread, and it raises wherever that
thread happens to be. The daemon runs its jobs on APScheduler's worker threads, and even in
the main thread "anywhere" includes the middle of an upload. So whoever wants a job to stop
cancels its ``CancelToken``; the job looks at the token at its safe points (between scan
batches, between uploads, between restored files, in every wait) and raises ``Interrupted``
there, which unwinds like any error: every ``finally`` runs, so wicked's ``global.lock`` and
the repository lock are released and staging is removed.

Waits take the token too: ``token.wait(seconds)`` instead of ``time.sleep`` ends at once
when the token is cancelled, so a job waiting for a lock or for wicked's writers stops
without waiting out its timeout.

``cancel_on_signals`` connects SIGTERM/SIGINT to a token (the CLI, later the daemon).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import Any

from wicked_dr.errors import Interrupted
from wicked_dr.log import get_logger

log = get_logger(__name__)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class CancelToken:
    """A one-way switch shared between a job and whoever may stop it; thread-safe.

    ``cancel`` may be called from any thread, any number of times (the first reason is kept).
    The job calls ``check`` at its safe points and waits with ``wait`` or ``sleep``."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._reason: str | None = None
        self._lock = threading.Lock()

    def cancel(self, reason: str = "cancelled") -> None:
        """Ask the job to stop at its next safe point; waits in ``wait`` end at once.

        Takes locks: never call it from a signal handler (the handler may interrupt this
        very thread inside ``wait`` while it holds the event's lock); ``cancel_on_signals``
        calls it from a thread of its own."""
        with self._lock:
            first = self._reason is None
            if first:
                self._reason = reason
        self._event.set()
        if first:
            log.info("cancel requested; stopping at the next safe point", reason=reason)

    @property
    def cancelled(self) -> bool:
        """Whether ``cancel`` was called."""
        return self._event.is_set()

    @property
    def reason(self) -> str | None:
        """Who asked to stop, as given to ``cancel`` (None while not cancelled)."""
        return self._reason

    def check(self, message: str = "interrupted") -> None:
        """Raise ``Interrupted(message)`` when cancelled; a safe point of the caller.

        ``message`` says what is left behind where that matters (e.g. a partial restore
        target); the CLI prints it as the one error line."""
        if self._event.is_set():
            raise Interrupted(message, reason=self._reason)

    def wait(self, seconds: float) -> bool:
        """Wait up to ``seconds``, or less when cancelled; True when cancelled.

        Replaces ``time.sleep`` in wait loops, so a wait never outlives a cancel."""
        return self._event.wait(max(0.0, seconds))

    def sleep(self, seconds: float) -> None:
        """``wait``, then ``check``: a pause in a loop that ends in ``Interrupted``."""
        self.wait(seconds)
        self.check()


class _NeverCancelled(CancelToken):
    """The token of callers that passed none: nobody can cancel it, since it is shared."""

    def cancel(self, reason: str = "cancelled") -> None:
        raise TypeError("NOT_CANCELLED is shared by every caller that passed no token and "
                        "cannot be cancelled; pass a CancelToken of your own")


NOT_CANCELLED: CancelToken = _NeverCancelled()
"""The default of every ``cancel`` parameter: a token that is never cancelled."""


class SignalBridge:
    """SIGTERM/SIGINT -> ``token.cancel``, without ever taking a lock in a signal handler.

    The C-level handler writes the signal number to a pipe (``signal.set_wakeup_fd``, which
    is async-signal-safe) and a small thread reading that pipe cancels the token. The
    Python-level handler only counts: while ``deferring`` it does nothing on the first
    signal (the work stops at its next safe point); before ``defer`` is called (work that
    has no safe points: reading the config, listing snapshots) and on a second signal it
    raises ``Interrupted`` at once, as a plain Ctrl-C would, and the stack unwinds from
    wherever the main thread is."""

    def __init__(self, token: CancelToken, signums: Sequence[signal.Signals]) -> None:
        self.token = token
        self.deferring = False
        self.received = 0
        self._signums = tuple(signums)

    def defer(self) -> None:
        """The work now checks ``token`` at safe points: a first signal only cancels it."""
        self.deferring = True

    def handle(self, signum: int, _frame: FrameType | None) -> None:
        """The Python-level handler (main thread): never takes a lock."""
        self.received += 1
        if not self.deferring or self.received > 1:
            raise Interrupted(reason=signal.Signals(signum).name)

    def watch(self, read_fd: int) -> None:
        """The thread: cancel the token for each of our signals the pipe reports; ends at
        end of file (the bridge closed the pipe)."""
        while data := os.read(read_fd, 64):
            for signum in data:
                if signum in self._signums:
                    name = signal.Signals(signum).name
                    self.token.cancel(name)
                    if self.deferring and self.received <= 1:
                        log.warning("stopping at the next safe point; send the signal again "
                                    "to stop at once", signal=name)


@contextlib.contextmanager
def cancel_on_signals(token: CancelToken,
                      signums: Sequence[signal.Signals] = STOP_SIGNALS
                      ) -> Iterator[SignalBridge]:
    """Within the block, ``signums`` cancel ``token`` (see ``SignalBridge``); the previous
    handlers and wake-up fd come back afterwards. Off the main thread, where Python allows
    no signal handler, the block runs without one (the caller's own thread owns signals)."""
    bridge = SignalBridge(token, signums)
    if threading.current_thread() is not threading.main_thread():
        yield bridge
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    previous: dict[signal.Signals, Any] = {}
    watcher = threading.Thread(target=bridge.watch, args=(read_fd,), name="signal-watcher",
                               daemon=True)
    watcher.start()
    old_wakeup = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    try:
        for signum in signums:
            previous[signum] = signal.signal(signum, bridge.handle)
        yield bridge
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(old_wakeup)
        os.close(write_fd)  # the watcher reads end of file and ends
        watcher.join(timeout=5)
        os.close(read_fd)
