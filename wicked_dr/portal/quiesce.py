"""wicked's own lock protocol, used to read a consistent volume.

portal-api refuses to take any per-file lock while ``global.lock`` exists at the top of the
dynamic data folder (writers get HTTP 423 and back off). So: create ``global.lock`` only if
absent, wait (bounded) until no ``*.lock`` is left in a directory before reading it, and
remove ``global.lock`` in every outcome. Our ``global.lock`` carries a marker so that a
crashed run's leftover is recognised and removed by the next run, while somebody else's
``global.lock`` is never touched.

Every wait here (for somebody else's ``global.lock``, the grace period, writes in flight)
waits on the run's cancel token: a cancelled backup leaves at once, through the same
``finally`` that removes our ``global.lock``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from wicked_dr.cancel import NOT_CANCELLED, CancelToken
from wicked_dr.errors import LockedError, OperationError
from wicked_dr.holder import Holder, current_holder
from wicked_dr.log import get_logger

log = get_logger(__name__)
GLOBAL_LOCK = "global.lock"
MARKER = "wicked-dr"
POLL_S = 0.002  # a write in flight usually ends within milliseconds
LOCK_POLL_S = 0.1  # how often a foreign global.lock is looked at again under --lock-wait
# A writer that checked for global.lock just before we created it may still create its own
# file lock; give it this long to show up before the first scan.
GRACE_S = 0.05


@dataclass
class QuiesceReport:
    """What the lock cost (how long wicked's writers were held off), and the wait for
    writes in flight, which a reader calls per directory before reading it."""

    mode: str
    waited_for_locks: int = 0
    window_s: float = 0.0
    removed_stale: bool = False
    deadline: float = field(default=math.inf, repr=False)
    cancel: CancelToken = field(default=NOT_CANCELLED, repr=False)
    graced_after: float = field(default=0.0, repr=False)  # monotonic end of the grace

    def wait_grace(self) -> None:
        """Wait out the rest of ``GRACE_S`` after ``global.lock`` was created: a writer that
        checked for it just before it existed has had time to create its own
        ``<file>.lock`` by then. A caller that lists a directory only once under the lock
        needs this; one whose change watch sees such a writer's lock does not."""
        left = self.graced_after - time.monotonic()
        if self.mode != "none" and left > 0:
            self.cancel.sleep(left)

    def settle(self, directory: str, names: list[str]) -> bool:
        """Wait until the writes in flight in one directory listing (``<file>.lock``) are
        done; True when there were any (list the directory again: files may have changed).

        Per directory, while reading, instead of one walk of the whole volume first: no
        writer takes a new lock once ``global.lock`` exists (after ``GRACE_S``), so a lock
        that is not in a listing cannot appear later, and a volume of a million files is
        not walked twice under the lock. The wait ends in ``Interrupted`` as soon as the
        run is cancelled."""
        if self.mode == "none":
            return False
        pending = [path for name in names if name.endswith(".lock") and name != GLOBAL_LOCK
                   and os.path.lexists(path := f"{directory}/{name}")]
        waited = bool(pending)
        self.waited_for_locks += len(pending)
        while pending:
            if time.monotonic() > self.deadline:
                raise OperationError(
                    f"{len(pending)} write(s) still in flight after the quiesce timeout "
                    f"(e.g. {pending[0]}); raise volume.quiesce_timeout_s or check portal-api")
            self.cancel.sleep(POLL_S)
            pending = [p for p in pending if os.path.lexists(p)]
        return waited


@contextlib.contextmanager
def quiesced(volume: Path, mode: str, timeout_s: float, *, lock_wait_s: float = 0.0,
             cancel: CancelToken = NOT_CANCELLED, still_running: StillRunning | None = None,
             grace: bool = True) -> Iterator[QuiesceReport]:
    """Hold wicked's ``global.lock`` for the duration of the block (mode ``wicked-lock``),
    waiting up to ``lock_wait_s`` for somebody else's to go away (it is never removed).
    The block calls ``settle`` on each directory listing before reading that directory.
    ``cancel`` ends every wait with ``Interrupted``; ``global.lock`` is released as always.
    ``still_running`` judges whether the creator of a ``global.lock`` wicked-dr left is
    gone (default: alive here, or on another host less than an hour ago); a backup passes
    the repository's judgement (``repository.locks.creator_gone_unless_locking``).
    With ``grace`` False the block starts at once after ``global.lock`` exists and calls
    ``report.wait_grace()`` itself where it needs the grace."""
    report = QuiesceReport(mode, cancel=cancel)
    if mode == "none":
        yield report
        return
    lock = volume / GLOBAL_LOCK
    holder = current_holder()
    deadline = time.monotonic() + lock_wait_s
    started = time.monotonic()
    linking = created = False
    attempts = 0
    try:
        while not created:
            attempts += 1
            cancel.check()  # a run cancelled before the lock never holds wicked's writers off
            try:
                report.removed_stale = (_remove_our_stale_lock(lock, still_running)
                                        or report.removed_stale)
                linking = True
                started = time.monotonic()
                _create(lock, holder)
                created = True
            except LockedError as exc:
                linking = False
                _wait_or_give_up(lock, exc, lock_wait_s, deadline, first=attempts == 1,
                                 cancel=cancel)
        report.graced_after = time.monotonic() + GRACE_S
        if grace:
            report.wait_grace()
        report.deadline = time.monotonic() + timeout_s
        yield report
    finally:
        # ``linking``: an interrupt may have come between the link and ``created = True``.
        if created or (linking and _owner_of(lock) == holder.instance):
            _release(lock, holder)
        report.window_s = round(time.monotonic() - started, 3) if linking else 0.0
        if linking:
            log.info("global.lock released", window_s=report.window_s)


def _wait_or_give_up(lock: Path, exc: LockedError, wait_s: float, deadline: float, *,
                     first: bool, cancel: CancelToken) -> None:
    """Another holder has global.lock: sleep a little before the next try, or raise once
    ``--lock-wait`` is used up (at once without a wait), or ``Interrupted`` when cancelled."""
    left = deadline - time.monotonic()
    if left <= 0:
        if wait_s <= 0:
            raise exc
        raise LockedError(f"{exc.one_line()} (still there after waiting {wait_s:g} s, "
                          "--lock-wait)") from None
    if first:
        log.info("global.lock held by another holder; waiting", path=str(lock),
                 wait_s=round(left, 1))
    cancel.sleep(min(LOCK_POLL_S, left))


def _create(lock: Path, holder: Holder) -> None:
    """Create global.lock with our marker already inside: written to a private temporary
    file, then hard-linked into place (atomic, fails if the name exists), so an interrupt
    can never leave an empty global.lock that the next run would take for somebody else's."""
    body = json.dumps({"created_by": MARKER, "holder": holder.to_json(),
                       "created": time.time()}).encode()
    tmp = lock.with_name(f".wicked-dr-{holder.instance}.tmp")
    try:
        tmp.write_bytes(body)
        os.link(tmp, lock)
    except FileExistsError:
        raise LockedError(f"{lock} exists and is not ours (portal-api or an operator holds "
                          "wicked's global lock); wait for it to go, never delete it "
                          "blindly") from None
    except FileNotFoundError:
        raise OperationError(f"cannot create {lock}: the volume folder {lock.parent} does "
                             "not exist") from None
    except PermissionError as exc:
        raise OperationError(f"cannot create {lock}: {exc.strerror} (wicked-dr needs write "
                             "access to the volume: run as uid 888 or root)") from None
    except OSError as exc:
        raise OperationError(f"cannot create {lock}: {exc.strerror}") from None
    finally:
        tmp.unlink(missing_ok=True)


def _release(lock: Path, holder: Holder) -> None:
    if _owner_of(lock) == holder.instance:
        lock.unlink(missing_ok=True)
    else:
        log.warning("global.lock no longer ours; left alone", path=str(lock))


def _owner_of(lock: Path) -> str | None:
    try:
        doc = json.loads(lock.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("created_by") != MARKER:
        return None
    holder = doc.get("holder") or {}
    return str(holder.get("instance")) if isinstance(holder, dict) else None


StillRunning = Callable[[Holder, float], str | None]
"""Whether the wicked-dr that created a ``global.lock`` (its holder, the lock's creation
time) may still be running: a one-line reason when it may, None when it is gone."""


def _still_running_by_age(holder: Holder, created: float) -> str | None:
    """The rule without a repository to ask (callers that pass no judge): alive on this
    host, or on another host less than an hour ago (nothing here can tell whether a process
    on another host still runs). Backups pass the repository's judgement instead."""
    if holder.is_alive_here():
        return f"held by a running wicked-dr ({holder.describe()})"
    if holder.host != socket.gethostname() and time.time() - created < 3600:
        return (f"created by wicked-dr on host {holder.host} less than an hour ago; if that "
                "run is dead, remove the file")
    return None


def remove_stale_global_lock(volume: Path, still_running: StillRunning) -> Holder | None:
    """Remove a ``global.lock`` that a crashed wicked-dr left in ``volume``, when
    ``still_running`` says its creator is gone; the creator, or None when nothing was
    removed. Somebody else's ``global.lock`` (portal-api's, an operator's) is never touched.
    The daemon calls this at start-up with a sharper judgement than the one-shot rule: a
    wicked-dr holding ``global.lock`` always holds a repository lock, so a creator whose
    repository lock is gone (expired) is gone too, on whatever host it ran."""
    lock = volume / GLOBAL_LOCK
    found = _our_lock(lock)
    if found is None:
        return None
    holder, created = found
    if still_running(holder, created) is not None:
        return None
    lock.unlink(missing_ok=True)
    log.warning("removed global.lock left by a crashed wicked-dr run", holder=holder.describe())
    return holder


def _remove_our_stale_lock(lock: Path, still_running: StillRunning | None = None) -> bool:
    """Remove a global.lock a crashed wicked-dr left behind; never anybody else's."""
    found = _our_lock(lock)
    if found is None:
        return False  # absent, or not ours (wicked writes an empty or foreign file)
    reason = (still_running or _still_running_by_age)(*found)
    if reason is not None:
        raise LockedError(f"{lock} was {reason}" if reason.startswith("created")
                          else f"{lock} is {reason}")
    lock.unlink(missing_ok=True)
    log.warning("removed global.lock left by a crashed wicked-dr run",
                holder=found[0].describe())
    return True


def _our_lock(lock: Path) -> tuple[Holder, float] | None:
    """The creator and creation time of a ``global.lock`` wicked-dr created, else None."""
    try:
        doc = json.loads(lock.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("created_by") != MARKER:
        return None
    return Holder.from_json(doc.get("holder") or {}), float(doc.get("created", 0))
