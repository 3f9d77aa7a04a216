"""The daemon lease on real backends (local directory, moto's S3 server): acquire, renew,
release, takeover after expiry, racing standbys, independence from repository locks, and
the start-up probe of conditional writes.

Leases are expired with injected clocks, never by sleeping: each lease gets its own
``FakeClock``, like replicas whose clocks the test sets.
"""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.repos import BACKENDS, RepoTarget, repo_target, write_key
from wicked_dr.backends.base import Backend, ObjectInfo
from wicked_dr.daemon.lease import (
    LEASE_NAME,
    DaemonLease,
    LeaseLost,
    check_replicas,
    probe_conditional_writes,
)
from wicked_dr.errors import BackendError, ExitCode, IntegrityError, RefusedError
from wicked_dr.holder import Holder, boot_id
from wicked_dr.repository.crypto import load_key
from wicked_dr.repository.locks import acquire, list_locks, locked
from wicked_dr.repository.repo import Repository

pytestmark = pytest.mark.integration

EXPIRY_S = 30.0
T0 = 1_800_000_000.0


class FakeClock:
    """A settable clock (unix seconds) for one replica."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def replica(name: str) -> Holder:
    """A holder on another host: only expiry may free its lease, never a liveness check."""
    return Holder(f"{name}.example", f"boot-{name}", 4242, 1, secrets.token_hex(8))


@pytest.fixture(params=BACKENDS)
def target(request: pytest.FixtureRequest, tmp_path: Path) -> RepoTarget:
    target = repo_target(request, tmp_path)
    Repository.init(target.backend(), None, create_location=True)
    return target


def lease(target: RepoTarget, holder: Holder, clock: FakeClock, *,
          conditional: bool = True) -> DaemonLease:
    """A lease on its own Repository object, as in a separate daemon process."""
    return DaemonLease(target.open(), expiry_s=EXPIRY_S, conditional=conditional, clock=clock,
                       holder=holder)


# --- acquire, renew, release -----------------------------------------------------------------


def test_acquire_renew_release(target: RepoTarget) -> None:
    clock = FakeClock()
    mine = lease(target, replica("a"), clock)
    assert not mine.held and mine.holder() is None
    assert mine.try_acquire() and mine.held
    info = mine.holder()
    assert info is not None and info.holder == mine.identity
    assert (info.acquired, info.renewed, info.expires) == (T0, T0, T0 + EXPIRY_S)
    assert info.holder.host in info.description and str(info.holder.pid) in info.description

    clock.advance(10)
    mine.renew()
    info = mine.holder()
    assert info is not None
    assert (info.acquired, info.renewed, info.expires) == (T0, T0 + 10, T0 + 10 + EXPIRY_S)

    clock.advance(10)
    assert mine.try_acquire()  # already ours: renews, keeps `acquired`
    info = mine.holder()
    assert info is not None and (info.acquired, info.expires) == (T0, T0 + 20 + EXPIRY_S)

    mine.release()
    assert not mine.held and mine.holder() is None
    assert list(target.backend().list("leases/")) == []
    with pytest.raises(LeaseLost):
        mine.renew()


def test_standby_waits_while_renewed_then_takes_over_after_expiry(target: RepoTarget) -> None:
    """A second daemon on a different host cannot take a renewed lease; once the holder
    stops renewing and the expiry passes it takes over, and the first one's renew fails."""
    clock_a, clock_b = FakeClock(), FakeClock()
    first = lease(target, replica("a"), clock_a)
    second = lease(target, replica("b"), clock_b)
    assert first.try_acquire()
    for _ in range(5):  # well past one expiry period in all, but renewed every 20 s
        clock_a.advance(20)
        clock_b.advance(20)
        first.renew()
        assert not second.try_acquire() and not second.held
    info = second.holder()
    assert info is not None and info.holder.host == "a.example"

    clock_b.advance(EXPIRY_S + 1)  # the first daemon stopped renewing (hung, partitioned)
    assert second.try_acquire() and second.held
    with pytest.raises(LeaseLost, match=r"b\.example") as lost:
        first.renew()
    assert lost.value.exit_code == ExitCode.LOCKED
    assert not first.held
    assert not first.try_acquire()  # the new holder is live
    first.release()  # not ours any more: must not delete the new holder's lease
    info = first.holder()
    assert info is not None and info.holder.host == "b.example"
    second.renew()


def test_own_lease_past_expiry_no_longer_counts_as_held(target: RepoTarget) -> None:
    """Past its own expires (renewals failing) a holder stops counting itself the holder,
    though nobody took over yet; a later renewal (nobody took it) restores it."""
    clock = FakeClock()
    mine = lease(target, replica("a"), clock)
    assert mine.try_acquire()
    clock.advance(EXPIRY_S + 1)
    assert not mine.held
    mine.renew()
    assert mine.held


@pytest.mark.parametrize("start", ["absent", "expired"])
def test_two_standbys_racing_exactly_one_wins(target: RepoTarget, start: str) -> None:
    """Two standbys try at the same moment, round after round, for a free lease (If-None-Match)
    or an expired one (If-Match on its etag): exactly one wins, and the object names it."""
    rounds = 10 if target.kind == "local" else 4
    later = FakeClock(T0)
    if start == "expired":
        assert lease(target, replica("old"), FakeClock(T0)).try_acquire()
    for round_no in range(rounds):
        later.advance(EXPIRY_S + 1)  # whatever the last round left has expired
        if start == "absent":
            target.backend().delete(LEASE_NAME)
        contenders = [lease(target, replica(f"r{round_no}-{i}"), FakeClock(later.now))
                      for i in range(2)]
        barrier = threading.Barrier(2)
        results: dict[int, bool] = {}

        def contend(i: int, barrier: threading.Barrier = barrier,
                    results: dict[int, bool] = results,
                    contenders: list[DaemonLease] = contenders) -> None:
            barrier.wait()
            results[i] = contenders[i].try_acquire()

        threads = [threading.Thread(target=contend, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert sorted(results.values()) == [False, True], (round_no, results)
        winner = contenders[next(i for i, won in results.items() if won)]
        info = winner.holder()
        assert info is not None and info.holder == winner.identity
        assert [c.held for c in contenders].count(True) == 1


def test_holder_dead_on_this_host_taken_at_once(target: RepoTarget) -> None:
    """A holder provably dead on this host and boot is taken over before its expiry; the same
    pid on another host is not (control)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    dead_here = Holder(socket.gethostname(), boot_id(), proc.pid, 1, secrets.token_hex(8))
    elsewhere = Holder("elsewhere.example", boot_id(), proc.pid, 1, secrets.token_hex(8))
    clock = FakeClock()
    assert lease(target, elsewhere, clock).try_acquire()
    assert not lease(target, replica("b"), clock).try_acquire()
    target.backend().delete(LEASE_NAME)
    assert lease(target, dead_here, clock).try_acquire()
    assert lease(target, replica("b"), clock).try_acquire()


def test_unreadable_lease_taken_only_after_unchanged_for_an_expiry(target: RepoTarget) -> None:
    """An object at leases/daemon that is no lease (damaged, foreign) is treated as held
    while it stays unchanged for one expiry period on our clock; then it is taken over."""
    target.backend().put(LEASE_NAME, b"not a lease")
    clock = FakeClock()
    standby = lease(target, replica("b"), clock)
    assert not standby.try_acquire()
    clock.advance(EXPIRY_S)
    assert not standby.try_acquire()
    clock.advance(1)
    assert standby.try_acquire()


# --- independence from repository locks ------------------------------------------------------


def test_lease_and_exclusive_repository_lock_do_not_block_each_other(target: RepoTarget) -> None:
    """The lease is no repository lock: an exclusive lock (prune, an operator's live restore)
    is taken while the lease is held, and the lease is taken while such a lock is held."""
    repo = target.open()
    clock = FakeClock()
    daemon = lease(target, replica("a"), clock)
    assert daemon.try_acquire()
    assert list_locks(repo) == []
    with locked(repo, exclusive=True, operation="restore", wait_s=0, expiry_s=30):
        daemon.renew()
        assert daemon.try_acquire()
        other = lease(target, replica("b"), FakeClock(T0 + 1000))
        assert other.try_acquire()  # expired for its clock: taken although a lock is held
    shared = acquire(repo, exclusive=False, operation="backup", wait_s=0, expiry_s=30)
    shared.release()
    daemon.release()


# --- encryption ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", BACKENDS)
def test_lease_object_encrypted_in_an_encrypted_repository(
        request: pytest.FixtureRequest, tmp_path: Path, kind: str) -> None:
    target = repo_target(request, tmp_path, kind)
    key = load_key(write_key(tmp_path / "repo.key"))
    repo = Repository.init(target.backend(), key, create_location=True)[0]
    holder = replica("secretive")
    daemon = DaemonLease(repo, expiry_s=EXPIRY_S, clock=FakeClock(), holder=holder)
    assert daemon.try_acquire()
    raw = target.backend().get(LEASE_NAME)
    assert raw[4] & 0x02  # envelope flag: encrypted
    for clear in (b"secretive", holder.instance.encode(), b"expires", b"description"):
        assert clear not in raw
    info = daemon.holder()
    assert info is not None and info.holder == holder
    with pytest.raises(IntegrityError):  # bound to its type: not openable as a lock
        repo.sealer.open("lock", LEASE_NAME, raw, max_size=1 << 20)
    assert json.loads(repo.sealer.open("lease", LEASE_NAME, raw, max_size=1 << 20))[
        "holder"]["host"] == "secretive.example"


# --- probing conditional writes --------------------------------------------------------------


class IgnoringConditions:
    """A test double with behaviour: a real backend whose puts drop the conditions named, the
    way a store without conditional writes silently does."""

    def __init__(self, inner: Backend, *, none_match: bool = True, match: bool = True) -> None:
        self.inner = inner
        self.url = inner.url
        self._none_match = none_match
        self._match = match

    def put(self, name: str, data: bytes, *, if_none_match: bool = False,
            if_match: str | None = None) -> str:
        return self.inner.put(name, data,
                              if_none_match=if_none_match and not self._none_match,
                              if_match=None if self._match else if_match)

    def put_file(self, name: str, path: Path) -> str:
        return self.inner.put_file(name, path)

    def get(self, name: str) -> bytes:
        return self.inner.get(name)

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        return self.inner.get_range(name, offset, length)

    def stat(self, name: str) -> ObjectInfo:
        return self.inner.stat(name)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def delete(self, name: str) -> None:
        self.inner.delete(name)

    def exists(self) -> bool:
        return self.inner.exists()

    def create(self) -> None:
        self.inner.create()

    def sync(self) -> None:
        self.inner.sync()


def test_probe_passes_on_real_backends(target: RepoTarget) -> None:
    backend = target.backend()
    assert probe_conditional_writes(backend) is None
    assert list(backend.list("leases/")) == []  # the scratch key is gone
    assert check_replicas(None, None) is True


@pytest.mark.parametrize(("ignored", "named"), [
    ({"none_match": True, "match": True}, "If-None-Match is ignored"),
    ({"none_match": False, "match": True}, "If-Match is ignored"),
])
def test_probe_names_the_ignored_condition(target: RepoTarget, ignored: dict[str, bool],
                                           named: str) -> None:
    backend = IgnoringConditions(target.backend(), **ignored)
    reason = probe_conditional_writes(backend)
    assert reason is not None and named in reason and "\n" not in reason
    assert list(backend.list("leases/")) == []
    with pytest.raises(RefusedError, match=r"daemon\.replicas: 1") as refused:
        check_replicas(reason, None)
    assert refused.value.exit_code == ExitCode.REFUSED and "\n" not in str(refused.value)
    with pytest.raises(RefusedError):
        check_replicas(reason, 2)
    assert check_replicas(reason, 1) is False


class RefusingConditions(IgnoringConditions):
    """A test double with behaviour: a real backend that answers every conditional put with
    a permanent error, as S3-compatible stores without the feature answer 501."""

    def put(self, name: str, data: bytes, *, if_none_match: bool = False,
            if_match: str | None = None) -> str:
        if if_none_match or if_match is not None:
            raise BackendError("S3 answered NotImplemented: A header you provided implies "
                               "functionality that is not implemented")
        return self.inner.put(name, data)


def test_probe_reports_a_store_refusing_conditional_puts(target: RepoTarget) -> None:
    backend = RefusingConditions(target.backend())
    reason = probe_conditional_writes(backend)
    assert reason is not None and "NotImplemented" in reason
    assert list(backend.list("leases/")) == []
    assert check_replicas(reason, 1) is False


@pytest.mark.parametrize("replicas", [None, 1, 3])
def test_check_replicas_runs_conditional_when_honoured(replicas: int | None) -> None:
    assert check_replicas(None, replicas) is True


def test_unconditional_lease_for_a_single_replica(target: RepoTarget) -> None:
    """On a store without conditions (daemon.replicas: 1) the lease still works for one
    daemon and still notices a takeover at renewal, by reading (no race protection)."""
    backend = IgnoringConditions(target.backend())
    clock_a, clock_b = FakeClock(), FakeClock()
    first = DaemonLease(Repository.open(backend, None), expiry_s=EXPIRY_S, conditional=False,
                        clock=clock_a, holder=replica("a"))
    second = DaemonLease(Repository.open(backend, None), expiry_s=EXPIRY_S, conditional=False,
                         clock=clock_b, holder=replica("b"))
    assert first.try_acquire()
    clock_a.advance(10)
    first.renew()
    assert not second.try_acquire()
    clock_b.advance(10 + EXPIRY_S + 1)
    assert second.try_acquire()
    with pytest.raises(LeaseLost):
        first.renew()
    second.release()
    assert second.holder() is None
