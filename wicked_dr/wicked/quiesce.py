"""wicked's own lock protocol, used to read a consistent volume.

portal-api refuses to take any per-file lock while ``global.lock`` exists at the top of the
dynamic data folder (writers get HTTP 423 and back off). So: create ``global.lock`` only if
absent, wait (bounded) until no ``*.lock`` is left in a directory before reading it, and
remove ``global.lock`` in every outcome. Our ``global.lock`` carries a marker so that a
crashed run's leftover is recognised and removed by the next run, while somebody else's
``global.lock`` is never touched.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from wicked_dr.errors import LockedError, OperationError
from wicked_dr.holder import Holder, current_holder
from wicked_dr.log import get_logger

log = get_logger(__name__)
GLOBAL_LOCK = "global.lock"
MARKER = "wicked-dr"
POLL_S = 0.02
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

    def settle(self, directory: str, names: list[str]) -> bool:
        """Wait until the writes in flight in one directory listing (``<file>.lock``) are
        done; True when there were any (list the directory again: files may have changed).

        Per directory, while reading, instead of one walk of the whole volume first: no
        writer takes a new lock once ``global.lock`` exists (after ``GRACE_S``), so a lock
        that is not in a listing cannot appear later, and a volume of a million files is
        not walked twice under the lock."""
        if self.mode == "none":
            return False
        pending = [f"{directory}/{name}" for name in names
                   if name.endswith(".lock") and name != GLOBAL_LOCK]
        waited = bool(pending)
        self.waited_for_locks += len(pending)
        while pending:
            if time.monotonic() > self.deadline:
                raise OperationError(
                    f"{len(pending)} write(s) still in flight after the quiesce timeout "
                    f"(e.g. {pending[0]}); raise volume.quiesce_timeout_s or check portal-api")
            time.sleep(POLL_S)
            pending = [p for p in pending if os.path.lexists(p)]
        return waited


@contextlib.contextmanager
def quiesced(volume: Path, mode: str, timeout_s: float) -> Iterator[QuiesceReport]:
    """Hold wicked's ``global.lock`` for the duration of the block (mode ``wicked-lock``).
    The block calls ``settle`` on each directory listing before reading that directory."""
    report = QuiesceReport(mode)
    if mode == "none":
        yield report
        return
    lock = volume / GLOBAL_LOCK
    report.removed_stale = _remove_our_stale_lock(lock)
    holder = current_holder()
    started = time.monotonic()
    created = False
    try:
        _create(lock, holder)
        created = True
        time.sleep(GRACE_S)
        report.deadline = time.monotonic() + timeout_s
        yield report
    finally:
        if created or _owner_of(lock) == holder.instance:
            _release(lock, holder)
        report.window_s = round(time.monotonic() - started, 3)
        log.info("global.lock released", window_s=report.window_s)


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
    except OSError as exc:
        raise OperationError(f"cannot create {lock}: {exc.strerror} (wicked-dr needs write "
                             "access to the volume: run as uid 888 or root)") from None
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


def _remove_our_stale_lock(lock: Path) -> bool:
    """Remove a global.lock a crashed wicked-dr left behind; never anybody else's."""
    try:
        doc = json.loads(lock.read_bytes())
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        return False  # not ours (wicked writes an empty or foreign file): _create refuses
    if not isinstance(doc, dict) or doc.get("created_by") != MARKER:
        return False
    holder = Holder.from_json(doc.get("holder") or {})
    if holder.is_alive_here():
        raise LockedError(f"{lock} is held by a running wicked-dr ({holder.describe()})")
    if holder.host != socket.gethostname() and time.time() - float(doc.get("created", 0)) < 3600:
        raise LockedError(f"{lock} was created by wicked-dr on host {holder.host} less than "
                          "an hour ago; if that run is dead, remove the file")
    lock.unlink(missing_ok=True)
    log.warning("removed global.lock left by a crashed wicked-dr run", holder=holder.describe())
    return True
