"""The cancel token and the signal bridge: work stopped from outside, at safe points.

Nothing here asserts speed: a wait that must end on a cancel is waited for with a generous
hang guard, and the assertion is what it returned.
"""

from __future__ import annotations

import os
import signal
import threading

import pytest

from tests.fixtures.threads import in_thread
from wicked_dr.actions.common import RunOptions
from wicked_dr.cancel import NOT_CANCELLED, CancelToken, cancel_on_signals
from wicked_dr.errors import ExitCode, Interrupted, WickedDRError
from wicked_dr.testing.scripted_token import ScriptedToken

HANG_GUARD_S = 60.0


def test_fresh_token_is_not_cancelled() -> None:
    """A new token lets the job run: check passes, a wait times out (False)."""
    token = CancelToken()
    assert not token.cancelled and token.reason is None
    token.check()
    assert token.wait(0.01) is False


def test_cancelled_token_raises_interrupted_exit_130_with_reason() -> None:
    """After cancel, check raises Interrupted (exit 130, a WickedDRError) carrying the first
    reason given; the message is the caller's (what is left behind) or "interrupted"."""
    token = CancelToken()
    token.cancel("SIGTERM")
    token.cancel("a later caller")
    assert token.cancelled and token.reason == "SIGTERM"
    with pytest.raises(Interrupted) as caught:
        token.check()
    assert isinstance(caught.value, WickedDRError)
    assert caught.value.exit_code == ExitCode.INTERRUPTED == 130
    assert caught.value.one_line() == "interrupted" and caught.value.reason == "SIGTERM"
    with pytest.raises(Interrupted, match="target /x is partial"):
        token.check("interrupted; target /x is partial")
    assert token.wait(3600) is True  # returns at once: a cancelled token never sleeps
    with pytest.raises(Interrupted):
        token.sleep(3600)


def test_wait_in_another_thread_ends_when_cancelled() -> None:
    """A job waiting an hour on its token returns True as soon as another thread cancels."""
    token = ScriptedToken()
    thread, results = in_thread(lambda: token.wait(3600))
    assert token.waiting.wait(HANG_GUARD_S)
    assert results == []  # still waiting: the cancel below is what ends it
    token.cancel("test")
    thread.join(HANG_GUARD_S)
    assert not thread.is_alive() and results == [True]


def test_not_cancelled_default_cannot_be_cancelled() -> None:
    """The shared default token refuses cancel (it would stop every caller that passed none)."""
    with pytest.raises(TypeError, match="shared"):
        NOT_CANCELLED.cancel("oops")
    assert not NOT_CANCELLED.cancelled
    NOT_CANCELLED.check()


def test_run_options_default_token_is_fresh_per_run() -> None:
    """RunOptions() gets a token of its own: cancelling one run never stops another."""
    first, second = RunOptions(), RunOptions()
    assert first.cancel is not second.cancel
    first.cancel.cancel("test")
    assert not second.cancel.cancelled


def test_scripted_token_cancels_at_the_given_safe_point() -> None:
    """ScriptedToken(cancel_at_check=3): checks 1 and 2 pass, the third raises."""
    token = ScriptedToken(cancel_at_check=3)
    token.check()
    token.check()
    with pytest.raises(Interrupted):
        token.check()
    assert token.checks == 3 and token.reason == "test: safe point 3"


# --- signals -----------------------------------------------------------------------------


def _wakeup_fd() -> int:
    fd = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(fd)
    return fd


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_first_signal_cancels_the_token_second_interrupts_at_once(
        signum: signal.Signals) -> None:
    """While the work stops at safe points (defer), a first SIGTERM/SIGINT only cancels the
    token (no exception where the main thread happens to be); a second one raises at once."""
    token = CancelToken()
    with cancel_on_signals(token) as bridge:
        bridge.defer()
        os.kill(os.getpid(), signum)
        assert token.wait(HANG_GUARD_S)  # cancelled by the watcher thread
        assert token.reason == signum.name
        with pytest.raises(Interrupted):
            os.kill(os.getpid(), signum)
            token.wait(HANG_GUARD_S)  # the handler raises here at the latest


def test_signal_before_defer_interrupts_at_once() -> None:
    """Before the work takes the token (reading the config, listing snapshots: no safe
    points), a signal interrupts at once, as Ctrl-C always did."""
    token = CancelToken()
    with cancel_on_signals(token), pytest.raises(Interrupted):
        os.kill(os.getpid(), signal.SIGTERM)
        threading.Event().wait(HANG_GUARD_S)


def test_signal_bridge_restores_handlers_and_wakeup_fd() -> None:
    """After the block the previous handlers and wake-up fd are back (the CLI runs in-process
    in tests, once per command)."""
    before = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT), _wakeup_fd())
    with cancel_on_signals(CancelToken()):
        assert signal.getsignal(signal.SIGTERM) != before[0]
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT),
            _wakeup_fd()) == before


def test_signal_bridge_off_the_main_thread_installs_nothing() -> None:
    """Python allows signal handlers only in the main thread: elsewhere the block just runs."""
    before = signal.getsignal(signal.SIGTERM)
    thread, results = in_thread(lambda: _enter_bridge())
    thread.join(HANG_GUARD_S)
    assert results == [before]


def _enter_bridge() -> object:
    with cancel_on_signals(CancelToken()):
        return signal.getsignal(signal.SIGTERM)
