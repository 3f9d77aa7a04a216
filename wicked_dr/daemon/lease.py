"""The daemon lease: one job runner per repository among the sidecars of a deployment.

Several replicas of the daemon may run against one repository (a rolling update, a
mis-scaled deployment); only the one holding the lease runs jobs, the others stand by. The
lease is one sealed JSON object, ``leases/daemon`` (docs/format.md, section 18). It lives
outside ``locks/`` on purpose: repository locks never see it, so it never blocks the
daemon's own prune or an operator's restore; jobs take their normal repository locks *inside*
the lease, which is how a live restore's exclusive lock makes the daemon's jobs wait.

Safety rests on conditional writes, the same as repository locks:

* a free lease is taken with a create-only put (If-None-Match), so of two starters one wins;
* the holder renews with If-Match on the etag of its own last write, so a renewal after a
  takeover fails (``LeaseLost``) instead of silently overwriting the new holder;
* an expired lease (or one whose holder is provably dead on this very host and boot) is
  taken over with If-Match on the etag of the expired object as read, so of two standbys
  racing for it exactly one wins.

Expiry compares the stored ``expires`` with the reader's clock, so replicas need roughly
synchronised clocks (NTP), as for repository locks; ``expiry_s`` should dwarf any skew.

Stores that ignore conditional writes are found at start-up by ``probe_conditional_writes``;
``check_replicas`` then allows only an acknowledged single replica (``daemon.replicas: 1``),
which runs the lease with plain puts (``conditional=False``).
"""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from wicked_dr.backends.base import Backend, PreconditionFailed
from wicked_dr.errors import (
    BackendError,
    ExitCode,
    IntegrityError,
    NotFoundError,
    RefusedError,
    RetryableBackendError,
    WickedDRError,
)
from wicked_dr.holder import Holder, boot_id, current_holder
from wicked_dr.log import get_logger
from wicked_dr.repository.layout import object_name, prefix_of
from wicked_dr.repository.repo import Repository

log = get_logger(__name__)

LEASE_ID = "daemon"
LEASE_NAME = object_name("lease", LEASE_ID)
PROBE_PREFIX = prefix_of("lease") + "probe-"
_READ_ATTEMPTS = 5


class LeaseLost(WickedDRError):
    """Another daemon took the lease over: stop starting jobs (a running one finishes under
    its repository lock, which is independent of the lease)."""

    exit_code = ExitCode.LOCKED


@dataclass(frozen=True)
class LeaseInfo:
    """The lease object as read from (or written to) the repository."""

    holder: Holder
    acquired: float
    renewed: float
    expires: float
    description: str

    def expired(self, now: float) -> bool:
        """Whether a standby may take it over: its holder stopped renewing, or provably died
        on this very host and boot (same rule as ``LockInfo.expired``)."""
        return now > self.expires or _dead_here(self.holder)

    def describe(self, now: float | None = None) -> str:
        """One line for logs: who holds it and for how long still."""
        left = max(0, int(self.expires - (time.time() if now is None else now)))
        return f"daemon lease held by {self.description} (expires in {left} s)"

    def to_json(self) -> dict[str, Any]:
        return {"holder": self.holder.to_json(), "acquired": self.acquired,
                "renewed": self.renewed, "expires": self.expires,
                "description": self.description}

    @classmethod
    def from_json(cls, doc: Any) -> LeaseInfo:
        """The lease; IntegrityError when the object is not a lease (written by no wicked-dr,
        or by a later format)."""
        try:
            return cls(Holder.from_json(doc["holder"]), float(doc["acquired"]),
                       float(doc["renewed"]), float(doc["expires"]), str(doc["description"]))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise IntegrityError(f"lease object {LEASE_NAME} is not a lease "
                                 f"({type(exc).__name__}: {exc})") from None


@dataclass(frozen=True)
class _Seen:
    """The lease object as one read found it: its etag and, when readable, its content."""

    etag: str
    info: LeaseInfo | None


class DaemonLease:
    """This daemon's handle on the lease. Thread-safe: the service's loop renews it (every
    tick, ``try_acquire``) while the job threads ask whether it is ``held``.

    ``conditional=False`` is for a store without conditional writes, acknowledged by
    ``daemon.replicas: 1``: the same protocol with plain puts, which cannot keep two replicas
    apart. ``clock`` is injectable so tests expire leases without sleeping.
    """

    def __init__(self, repo: Repository, *, expiry_s: float, conditional: bool = True,
                 clock: Callable[[], float] = time.time, holder: Holder | None = None) -> None:
        if expiry_s <= 0:
            raise ValueError("expiry_s must be positive")
        self._repo = repo
        self._expiry_s = expiry_s
        self._conditional = conditional
        self._clock = clock
        self._holder = holder or current_holder()
        self._mutex = threading.RLock()
        self._etag: str | None = None
        self._info: LeaseInfo | None = None
        self._last_seen: LeaseInfo | None = None
        # An unreadable lease object: its etag and when we first saw it (our clock).
        self._unreadable: tuple[str, float] | None = None
        if not conditional:
            log.warning("daemon lease without conditional writes: the store cannot keep two "
                        "replicas apart, so two daemons would both run jobs; run exactly one "
                        "(daemon.replicas: 1)", repository=repo.url)

    @property
    def last_seen(self) -> LeaseInfo | None:
        """The lease as the last ``try_acquire`` found it (no I/O): who held it then."""
        with self._mutex:
            return self._info if self._info is not None else self._last_seen

    @property
    def identity(self) -> Holder:
        """Who this daemon is in the lease object."""
        return self._holder

    @property
    def held(self) -> bool:
        """Whether we hold the lease: our last write succeeded and has not expired on our
        clock. Past our own ``expires`` a standby may already have taken over, so we stop
        counting ourselves the holder even before a renewal tells us."""
        with self._mutex:
            return self._info is not None and self._clock() <= self._info.expires

    def try_acquire(self) -> bool:
        """Take the lease when absent or expired, renew it when already ours; True when we
        hold it afterwards. Never waits: a lost race or a live holder answers False."""
        with self._mutex:
            seen = self._read()
            now = self._clock()
            self._last_seen = seen.info if seen else None
            if seen is None:
                return self._write_new(now, if_none_match=True, if_match=None)
            if seen.info is not None and seen.info.holder == self._holder:
                return self._renew_from(seen, now)
            if not self._may_take_over(seen, now):
                self._forget()
                return False
            if seen.info is not None:
                log.warning("taking over the daemon lease", previous=seen.info.describe(now),
                            dead_here=_dead_here(seen.info.holder))
            return self._write_new(now, if_none_match=False, if_match=seen.etag)

    def renew(self) -> None:
        """Push ``expires`` forward; ``LeaseLost`` when another daemon took the lease (or we
        never held it)."""
        with self._mutex:
            if self._info is None or self._etag is None:
                raise LeaseLost("the daemon lease is not held by this daemon")
            if not self._conditional:
                self._etag = self._check_still_ours()
            now = self._clock()
            info = LeaseInfo(self._holder, self._info.acquired, now, now + self._expiry_s,
                             self._info.description)
            try:
                self._etag = self._put(info, if_none_match=False, if_match=self._etag)
            except PreconditionFailed:
                seen = self._read_quietly()
                self._lost(seen.info if seen else None)
            self._info = info

    def holder(self) -> LeaseInfo | None:
        """The lease object as read now (for logs and /metrics); None when absent or
        unreadable. Backend errors propagate."""
        seen = self._read()
        return seen.info if seen else None

    def release(self) -> None:
        """Delete the lease if it is still ours, so a standby takes over at once instead of
        after expiry. Best effort, never raises: an unreleased lease simply expires.

        Read, compare, delete is not atomic (backends have no conditional delete): only a
        standby that took our *expired* lease in between could lose its fresh lease, and it
        notices at its next renewal (``LeaseLost``) and re-acquires the free lease."""
        with self._mutex:
            try:
                seen = self._read()
                if seen is not None and seen.info is not None and seen.info.holder == self._holder:
                    self._repo.backend.delete(LEASE_NAME)
                    log.info("daemon lease released")
            except WickedDRError as exc:
                log.warning("daemon lease not released; it expires by itself",
                            error=exc.one_line())
            finally:
                self._forget()

    # --- internals -------------------------------------------------------------------------

    def _renew_from(self, seen: _Seen, now: float) -> bool:
        """Renew a lease the store says is ours (possibly written by an earlier call whose
        answer was lost), keeping its ``acquired``."""
        assert seen.info is not None
        info = LeaseInfo(self._holder, seen.info.acquired, now, now + self._expiry_s,
                         seen.info.description)
        try:
            etag = self._put(info, if_none_match=False, if_match=seen.etag)
        except PreconditionFailed:
            self._forget()
            return False
        self._etag, self._info = etag, info
        return True

    def _write_new(self, now: float, *, if_none_match: bool, if_match: str | None) -> bool:
        info = LeaseInfo(self._holder, now, now, now + self._expiry_s, _description(self._holder))
        try:
            etag = self._put(info, if_none_match=if_none_match, if_match=if_match)
        except PreconditionFailed:
            self._forget()  # another standby won the race
            return False
        self._etag, self._info = etag, info
        self._unreadable = None
        log.info("daemon lease acquired", expires_in_s=self._expiry_s)
        return True

    def _may_take_over(self, seen: _Seen, now: float) -> bool:
        """An expired (or dead-here) lease may be taken; an unreadable one only once its etag
        stayed unchanged for a whole expiry period on our clock (nobody renews it), so a
        damaged object never needs removing by hand yet never cuts a live holder short."""
        if seen.info is not None:
            return seen.info.expired(now)
        if self._unreadable is None or self._unreadable[0] != seen.etag:
            self._unreadable = (seen.etag, now)
            log.warning("unreadable daemon lease; treated as held until it stays unchanged "
                        "for one expiry period", name=LEASE_NAME, expiry_s=self._expiry_s)
            return False
        return now - self._unreadable[1] > self._expiry_s

    def _check_still_ours(self) -> str:
        """Without conditional writes: read the lease and insist it is still ours (narrows,
        cannot close, the window in which a takeover is overwritten); its etag."""
        seen = self._read()
        if seen is None or seen.info is None or seen.info.holder != self._holder:
            self._lost(seen.info if seen else None)
        assert seen is not None
        return seen.etag

    def _lost(self, current: LeaseInfo | None) -> NoReturn:
        self._forget()
        who = current.describe(self._clock()) if current else "the lease object is gone"
        raise LeaseLost(f"daemon lease lost: {who}")

    def _forget(self) -> None:
        self._etag = None
        self._info = None

    def _put(self, info: LeaseInfo, *, if_none_match: bool, if_match: str | None) -> str:
        sealed = self._repo.sealer.seal("lease", LEASE_NAME, json.dumps(info.to_json()).encode())
        if not self._conditional:
            return self._repo.backend.put(LEASE_NAME, sealed)
        return self._repo.backend.put(LEASE_NAME, sealed, if_none_match=if_none_match,
                                      if_match=if_match)

    def _read(self) -> _Seen | None:
        """The lease object and the etag of exactly that content (None when absent).

        The backend returns content and etag in separate calls, so the read is sandwiched
        between two stats and repeated when they differ: deciding on old content but writing
        If-Match with a newer etag would overwrite a fresh takeover."""
        for _ in range(_READ_ATTEMPTS):
            try:
                before = self._repo.backend.stat(LEASE_NAME).etag
                data = self._repo.backend.get(LEASE_NAME)
                after = self._repo.backend.stat(LEASE_NAME).etag
            except NotFoundError:
                return None
            if before == after:
                return _Seen(before, self._parse(data))
        raise RetryableBackendError(f"{LEASE_NAME} changed during {_READ_ATTEMPTS} reads")

    def _read_quietly(self) -> _Seen | None:
        with contextlib.suppress(WickedDRError):
            return self._read()
        return None

    def _parse(self, data: bytes) -> LeaseInfo | None:
        try:
            plaintext = self._repo.sealer.open("lease", LEASE_NAME, data, max_size=1024 * 1024)
            return LeaseInfo.from_json(json.loads(plaintext))
        except (IntegrityError, ValueError) as exc:
            message = exc.one_line() if isinstance(exc, WickedDRError) else "not valid JSON"
            log.warning("daemon lease object unreadable", error=message)
            return None


def probe_conditional_writes(backend: Backend) -> str | None:
    """Whether the store honours If-None-Match and If-Match, tried in a scratch key
    (``leases/probe-<random>``, deleted in all cases). None when it does, else one line
    naming the condition it ignored. Retryable errors propagate (no verdict without an
    answer); a permanent refusal of a conditional put (some S3-compatible stores answer
    501 to the headers) counts as "not honoured", with the store's words."""
    name = PROBE_PREFIX + secrets.token_hex(8)
    try:
        return _probe(backend, name)
    except RetryableBackendError:
        raise
    except BackendError as exc:
        return f"a conditional put failed on {backend.url} (scratch key {name}): " \
               f"{exc.one_line()}"
    finally:
        with contextlib.suppress(WickedDRError):
            backend.delete(name)


def _probe(backend: Backend, name: str) -> str | None:
    """The four puts; PreconditionFailed only where the condition must hold."""
    where = f"{backend.url} (scratch key {name})"
    etag = backend.put(name, b"probe 1", if_none_match=True)
    if _put_succeeds(backend, name, b"probe 2", if_none_match=True, if_match=None):
        return f"If-None-Match is ignored by {where}: a second create-only put succeeded"
    wrong = "0" * 32 if etag != "0" * 32 else "1" * 32
    if _put_succeeds(backend, name, b"probe 3", if_none_match=False, if_match=wrong):
        return f"If-Match is ignored by {where}: a put with a wrong etag succeeded"
    try:
        backend.put(name, b"probe 4", if_match=etag)
    except PreconditionFailed as exc:
        return f"If-Match with the current etag was refused by {where}: {exc.one_line()}"
    return None


def _put_succeeds(backend: Backend, name: str, data: bytes, *, if_none_match: bool,
                  if_match: str | None) -> bool:
    """Whether a put whose condition must fail succeeded anyway."""
    try:
        backend.put(name, data, if_none_match=if_none_match, if_match=if_match)
    except PreconditionFailed:
        return False
    return True


def check_replicas(reason: str | None, replicas: int | None) -> bool:
    """The start-up rule: True = run with the conditional lease (the store honours
    conditions); False = run it unconditionally, because ``daemon.replicas: 1`` acknowledges
    a store without them; RefusedError otherwise (two replicas could both run jobs)."""
    if reason is None:
        return True
    if replicas == 1:
        log.warning("the store does not honour conditional writes; running as the only "
                    "replica (daemon.replicas: 1): a second daemon would run jobs too",
                    reason=reason)
        return False
    raise RefusedError(f"the store does not honour conditional writes ({reason}), so the "
                       "daemon lease cannot keep replicas apart; run one daemon and set "
                       "daemon.replicas: 1")


def _dead_here(holder: Holder) -> bool:
    """A holder on this very host and boot whose process is gone: provably dead."""
    return (holder.host == socket.gethostname() and holder.boot_id == boot_id()
            and not holder.is_alive_here())


def _description(holder: Holder) -> str:
    return f"wicked-dr daemon on host {holder.host}, pid {holder.pid}"
