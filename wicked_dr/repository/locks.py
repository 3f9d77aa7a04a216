"""Repository locks: the one lock module of the product (the daemon's lease builds on it).

A lock is a sealed JSON object ``locks/<id>`` written with a conditional put (If-None-Match
on S3, O_EXCL + link locally) and renewed by its holder with If-Match before it expires.
Shared locks (backup) coexist; an exclusive lock (prune, live restore) excludes all others.
A lock whose expiry passed, or whose holder is provably dead on this very host, is taken over
(deleted by the next acquirer): nobody ever has to "unlock" by hand.

Two writers that race past the first check both write and re-check; whoever sees a
conflicting lock after its own write withdraws and retries after a random delay, so two
conflicting holders can never both win.

Waiting for a conflicting holder waits on the caller's cancel token: a cancelled acquirer
leaves the wait at once with ``Interrupted``, holding nothing.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from wicked_dr.backends.base import PreconditionFailed
from wicked_dr.cancel import NOT_CANCELLED, CancelToken
from wicked_dr.errors import IntegrityError, LockedError, NotFoundError, WickedDRError
from wicked_dr.holder import Holder, current_holder
from wicked_dr.log import get_logger
from wicked_dr.repository.layout import object_name, prefix_of
from wicked_dr.repository.repo import Repository

log = get_logger(__name__)


@dataclass(frozen=True)
class LockInfo:
    """A lock as read from the repository."""

    lock_id: str
    holder: Holder
    exclusive: bool
    operation: str
    created: float
    expires: float

    def expired(self, now: float) -> bool:
        """Whether the holder stopped renewing it, or provably died on this host."""
        if now > self.expires:
            return True
        dead_here = (self.holder.host == current_holder().host
                     and self.holder.boot_id == current_holder().boot_id
                     and not self.holder.is_alive_here())
        return dead_here

    def conflicts_with(self, exclusive: bool) -> bool:
        return exclusive or self.exclusive

    def describe(self) -> str:
        kind = "exclusive" if self.exclusive else "shared"
        left = max(0, int(self.expires - time.time()))
        return f"{kind} lock for {self.operation} by {self.holder.describe()} (expires in {left} s)"


class RepositoryLock:
    """A held lock; renews itself in a background thread until released."""

    def __init__(self, repo: Repository, info: LockInfo, etag: str, expiry_s: float) -> None:
        self._repo = repo
        self.info = info
        self.waited_s = 0.0  # how long ``acquire`` waited for conflicting holders
        self._etag = etag
        self._expiry_s = expiry_s
        self._stop = threading.Event()
        self.lost: str | None = None
        self._thread = threading.Thread(target=self._renew_loop, daemon=True,
                                        name=f"lock-renew-{info.lock_id[:8]}")
        self._thread.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self._expiry_s / 3):
            try:
                self.renew()
            except WickedDRError as exc:
                self.lost = exc.one_line()
                log.error("repository lock lost", lock=self.info.lock_id, error=self.lost)
                return

    def renew(self) -> None:
        """Push the expiry forward; fails if somebody took the lock over."""
        now = time.time()
        info = LockInfo(self.info.lock_id, self.info.holder, self.info.exclusive,
                        self.info.operation, self.info.created, now + self._expiry_s)
        self._etag = _write(self._repo, info, if_match=self._etag)
        self.info = info

    def check(self) -> None:
        """Raise if the lock was lost (call before making anything visible)."""
        if self.lost:
            raise LockedError(f"repository lock lost: {self.lost}")

    def release(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        with contextlib.suppress(WickedDRError):
            self._repo.backend.delete(object_name("lock", self.info.lock_id))


@contextlib.contextmanager
def locked(repo: Repository, *, exclusive: bool, operation: str, wait_s: float,
           expiry_s: float, cancel: CancelToken = NOT_CANCELLED) -> Iterator[RepositoryLock]:
    """Hold a repository lock for the block (released however the block ends)."""
    lock = acquire(repo, exclusive=exclusive, operation=operation, wait_s=wait_s,
                   expiry_s=expiry_s, cancel=cancel)
    try:
        yield lock
    finally:
        lock.release()


def acquire(repo: Repository, *, exclusive: bool, operation: str, wait_s: float,
            expiry_s: float, cancel: CancelToken = NOT_CANCELLED) -> RepositoryLock:
    """Take a lock, waiting up to ``wait_s`` for conflicting holders; LockedError after.
    Once ``cancel`` is cancelled the wait ends at once in ``Interrupted``, holding nothing."""
    started = time.monotonic()
    deadline = started + wait_s
    delay = 0.2
    waiting = False
    while True:
        cancel.check()
        blockers = _conflicts(repo, exclusive, exclude=None)
        if not blockers:
            lock = _try_write(repo, exclusive, operation, expiry_s)
            if lock is not None:
                lock.waited_s = round(time.monotonic() - started, 3)
                return lock
            blockers = _conflicts(repo, exclusive, exclude=None)
        if time.monotonic() >= deadline:
            what = blockers[0].describe() if blockers else "a concurrent holder"
            raise LockedError(f"repository {repo.url} is locked: {what}; retry later or "
                              "pass --lock-wait")
        if blockers and not waiting:
            waiting = True
            log.info("repository locked; waiting", lock=blockers[0].describe(),
                     wait_s=round(deadline - time.monotonic(), 1))
        # Full jitter: two contenders that both withdrew retry at clearly different times.
        pause = delay * (0.5 + secrets.randbelow(1000) / 1000)
        cancel.sleep(min(pause, max(0.0, deadline - time.monotonic()) + 0.05))
        delay = min(delay * 2, 5.0)


def _try_write(repo: Repository, exclusive: bool, operation: str,
               expiry_s: float) -> RepositoryLock | None:
    now = time.time()
    info = LockInfo(secrets.token_hex(16), current_holder(), exclusive, operation, now,
                    now + expiry_s)
    etag = _write(repo, info, if_none_match=True)
    # Any conflicting lock seen after our write means a race: withdraw. Both sides may
    # withdraw (they retry with jitter), but two can never both win.
    if _conflicts(repo, exclusive, exclude=info.lock_id):
        repo.backend.delete(object_name("lock", info.lock_id))
        return None
    log.debug("repository lock taken", lock=info.lock_id, exclusive=exclusive,
              operation=operation)
    return RepositoryLock(repo, info, etag, expiry_s)


def _conflicts(repo: Repository, exclusive: bool, exclude: str | None) -> list[LockInfo]:
    now = time.time()
    found = []
    for lock in list_locks(repo):
        if lock.lock_id == exclude or not lock.conflicts_with(exclusive):
            continue
        if lock.expired(now):
            log.warning("taking over an expired lock", lock=lock.describe())
            repo.backend.delete(object_name("lock", lock.lock_id))
            continue
        found.append(lock)
    return found


def creator_gone_unless_locking(repo: Repository) -> Callable[[Holder, float], str | None]:
    """A judge of a ``global.lock`` wicked-dr created (``portal/quiesce.py``): its creator
    may still run when it is alive on this host or renews a repository lock (a wicked-dr
    holding ``global.lock`` always holds one: backup takes it first); else it is gone, on
    whatever host it ran. Returns the reason it may still run, or None."""
    def still_running(holder: Holder, created: float) -> str | None:
        if holder.is_alive_here():
            return f"held by a running wicked-dr ({holder.describe()})"
        now = time.time()
        for lock in list_locks(repo):
            if lock.holder.instance == holder.instance and not lock.expired(now):
                return (f"created by a wicked-dr that still renews its repository lock "
                        f"({lock.describe()})")
        return None

    return still_running


def list_locks(repo: Repository) -> list[LockInfo]:
    """Every readable lock; unreadable ones are reported and treated as absent."""
    locks = []
    for info in repo.backend.list(prefix_of("lock")):
        lock_id = info.name.rsplit("/", 1)[-1]
        with contextlib.suppress(NotFoundError):
            try:
                locks.append(_read(repo, lock_id))
            except IntegrityError as exc:
                log.warning("unreadable lock ignored", lock=lock_id, error=exc.one_line())
    return locks


def _read(repo: Repository, lock_id: str) -> LockInfo:
    """The lock; IntegrityError when its object is not a lock (fields missing or of the
    wrong type: it was written by no wicked-dr)."""
    doc: dict[str, Any] = repo.load_json("lock", lock_id)
    try:
        return LockInfo(lock_id, Holder.from_json(doc["holder"]), bool(doc["exclusive"]),
                        str(doc["operation"]), float(doc["created"]),
                        float(doc["expires"]))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise IntegrityError(f"lock object {object_name('lock', lock_id)} is not a lock "
                             f"({type(exc).__name__}: {exc})") from None


def _write(repo: Repository, info: LockInfo, *, if_none_match: bool = False,
           if_match: str | None = None) -> str:
    name = object_name("lock", info.lock_id)
    doc = {"holder": info.holder.to_json(), "exclusive": info.exclusive,
           "operation": info.operation, "created": info.created, "expires": info.expires}
    sealed = repo.sealer.seal("lock", name, json.dumps(doc).encode())
    try:
        return repo.backend.put(name, sealed, if_none_match=if_none_match, if_match=if_match)
    except PreconditionFailed:
        raise LockedError(f"lock {info.lock_id} was changed by another process") from None
