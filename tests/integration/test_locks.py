"""Locks: repository locks (conditional writes on the local backend and on S3) and wicked's
global.lock as a backup uses it."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import inotify_simple
import pytest

from tests.fixtures.repos import (
    BACKENDS,
    REPO_ROOT,
    RepoTarget,
    Setup,
    cli,
    cli_command,
    local_target,
    make_setup,
    repo_target,
)
from wicked_dr.engine.catalog import load_snapshot, snapshot_ids
from wicked_dr.errors import Interrupted, LockedError
from wicked_dr.holder import Holder, boot_id, current_holder
from wicked_dr.portal import quiesce
from wicked_dr.repository.locks import RepositoryLock, acquire, list_locks
from wicked_dr.repository.repo import Repository
from wicked_dr.testing.sample_volume import generate
from wicked_dr.testing.scripted_token import ScriptedToken

pytestmark = pytest.mark.integration


@pytest.fixture(params=BACKENDS)
def repo(request: pytest.FixtureRequest, tmp_path: Path) -> Repository:
    target = repo_target(request, tmp_path)
    backend = target.backend()
    return Repository.init(backend, None, create_location=True)[0]


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _plant_lock(repo: Repository, holder: Holder, *, exclusive: bool, expires_in: float) -> str:
    """A lock object as another holder would have written it (sealed like the engine does)."""
    lock_id = secrets.token_hex(16)
    now = time.time()
    repo.save("lock", lock_id, json.dumps({
        "holder": holder.to_json(), "exclusive": exclusive, "operation": "prune",
        "created": now - 100, "expires": now + expires_in}).encode())
    return lock_id


# --- repository locks ----------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "rounds"), [
    ("local", 20),
    ("s3", 5),
])
def test_two_exclusive_acquirers_exactly_one_wins(tmp_path: Path, request: pytest.FixtureRequest,
                                                  kind: str, rounds: int) -> None:
    """Two exclusive acquirers racing, round after round: exactly one holds the lock."""
    target = repo_target(request, tmp_path, kind)
    repo = Repository.init(target.backend(), None, create_location=True)[0]
    # One Repository per contender, like two processes (a Sealer is not shared across threads).
    contenders = [target.open(), target.open()]
    for _ in range(rounds):
        barrier = threading.Barrier(2)
        results: list[object] = []

        def contend(mine: Repository, barrier: threading.Barrier = barrier,
                    results: list[object] = results) -> None:
            barrier.wait()
            try:
                # The winner keeps its lock until both are done, so the loser must fail.
                results.append(acquire(mine, exclusive=True, operation="prune", wait_s=1.0,
                                       expiry_s=30))
            except LockedError as exc:
                results.append(exc)

        threads = [threading.Thread(target=contend, args=(c,)) for c in contenders]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        winners = [r for r in results if not isinstance(r, LockedError)]
        for winner in winners:
            winner.release()  # type: ignore[attr-defined]
        assert len(results) == 2 and len(winners) == 1, results
        assert list_locks(repo) == []


def test_shared_locks_coexist(repo: Repository) -> None:
    """Two shared (backup) locks are held at the same time."""
    first = acquire(repo, exclusive=False, operation="backup", wait_s=0, expiry_s=30)
    second = acquire(repo, exclusive=False, operation="backup", wait_s=0, expiry_s=30)
    assert len(list_locks(repo)) == 2
    first.release()
    second.release()
    assert list_locks(repo) == []


def test_exclusive_blocked_by_shared_locked_error_after_wait(repo: Repository) -> None:
    """An exclusive acquirer waits --lock-wait for a live shared holder, then LockedError."""
    shared = acquire(repo, exclusive=False, operation="backup", wait_s=0, expiry_s=30)
    try:
        started = time.monotonic()
        with pytest.raises(LockedError, match="locked"):
            acquire(repo, exclusive=True, operation="prune", wait_s=1.0, expiry_s=30)
        assert time.monotonic() - started >= 1.0
        acquire(repo, exclusive=False, operation="backup", wait_s=0, expiry_s=30).release()
    finally:
        shared.release()
    acquire(repo, exclusive=True, operation="prune", wait_s=0, expiry_s=30).release()


def test_expired_lock_taken_over(repo: Repository) -> None:
    """A lock whose expiry passed is taken over at once; an unexpired one blocks (control)."""
    other_host = Holder("elsewhere.example", "boot", 4242, 1, "inst")
    live = _plant_lock(repo, other_host, exclusive=True, expires_in=60)
    with pytest.raises(LockedError):
        acquire(repo, exclusive=False, operation="backup", wait_s=0, expiry_s=30)
    repo.backend.delete(f"locks/{live}")
    expired = _plant_lock(repo, other_host, exclusive=True, expires_in=-1)
    lock = acquire(repo, exclusive=True, operation="prune", wait_s=0, expiry_s=30)
    assert [x.lock_id for x in list_locks(repo)] == [lock.info.lock_id] != [expired]
    lock.release()


def test_lock_of_dead_process_on_this_host_taken_over(repo: Repository) -> None:
    """An unexpired lock whose holder process is gone from this host is taken over."""
    dead = Holder(socket.gethostname(), boot_id(), _dead_pid(), 1, "dead")
    _plant_lock(repo, dead, exclusive=True, expires_in=600)
    lock = acquire(repo, exclusive=True, operation="prune", wait_s=0, expiry_s=30)
    assert len(list_locks(repo)) == 1
    lock.release()


def test_renewal_keeps_lock_past_its_expiry(repo: Repository) -> None:
    """A holder renews its lock, so it still excludes others well after expiry_s."""
    lock = acquire(repo, exclusive=True, operation="prune", wait_s=0, expiry_s=0.9)
    other = Repository.open(repo.backend, None)  # its own Sealer: the renewer runs meanwhile
    try:
        time.sleep(2.5)
        assert lock.lost is None
        with pytest.raises(LockedError):
            acquire(other, exclusive=True, operation="prune", wait_s=0, expiry_s=30)
        lock.check()
        assert lock.info.expires > time.time()
    finally:
        lock.release()
    acquire(repo, exclusive=True, operation="prune", wait_s=0, expiry_s=30).release()


def test_cancelled_lock_wait_ends_with_interrupted_holding_nothing(repo: Repository) -> None:
    """An acquirer that may wait an hour for an exclusive holder is cancelled while waiting:
    Interrupted (not LockedError, not the end of the hour), and no lock of its own is left."""
    held = acquire(repo, exclusive=True, operation="prune", wait_s=0, expiry_s=30)
    waiter = Repository.open(repo.backend, None)  # its own Sealer, like another process
    token = ScriptedToken()
    outcome: list[BaseException | RepositoryLock] = []

    def wait_for_lock() -> None:
        try:
            outcome.append(acquire(waiter, exclusive=False, operation="backup", wait_s=3600,
                                   expiry_s=30, cancel=token))
        except BaseException as exc:  # the test looks at it
            outcome.append(exc)

    thread = threading.Thread(target=wait_for_lock, daemon=True)
    thread.start()
    try:
        assert token.waiting.wait(60)
        token.cancel("test")
        thread.join(60)
        assert not thread.is_alive()
        assert len(outcome) == 1 and isinstance(outcome[0], Interrupted), outcome
        assert [lock.lock_id for lock in list_locks(repo)] == [held.info.lock_id]
    finally:
        held.release()


def test_backup_cli_exclusive_lock_held_exit_4_after_lock_wait(tmp_path: Path) -> None:
    """backup --lock-wait 1s against a live exclusive holder exits 4 after about a second."""
    s = make_setup(tmp_path, local_target(tmp_path))
    generate(s.volume, users=10, seed=1)
    assert cli(s.config_path, "backup").code == 0
    repo = s.repo()
    held = acquire(repo, exclusive=True, operation="prune", wait_s=0, expiry_s=30)
    try:
        started = time.monotonic()
        run = cli(s.config_path, "backup", "--lock-wait", "1s")
        assert run.code == 4, run.err
        assert time.monotonic() - started >= 1.0
        assert "locked" in run.err
    finally:
        held.release()
    assert len(snapshot_ids(repo)) == 1
    assert not (s.volume / "global.lock").exists()


# --- wicked's global.lock ----------------------------------------------------------------------


@pytest.fixture
def volume_setup(tmp_path: Path) -> Setup:
    s = make_setup(tmp_path, local_target(tmp_path), quiesce_timeout_s=5)
    generate(s.volume, users=30, seed=2)
    return s


def test_backup_waits_for_file_lock_then_removes_global_lock(
        volume_setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write in flight (<file>.lock) is waited for under global.lock; once it ends the scan
    goes on, and afterwards global.lock is gone. The writer finishes only after the backup
    has seen its lock (observed through the settle hook), so no timing decides the test."""
    s = volume_setup
    pending = s.volume / "users" / "_index.json.lock"
    pending.write_text("")
    waiting = threading.Event()
    settle = quiesce.QuiesceReport.settle

    def observed_settle(self: quiesce.QuiesceReport, directory: str, names: list[str]) -> bool:
        if pending.name in names:
            assert (s.volume / "global.lock").exists()
            waiting.set()
        return settle(self, directory, names)

    monkeypatch.setattr(quiesce.QuiesceReport, "settle", observed_settle)

    def writer_finishes() -> None:
        if waiting.wait(120):
            time.sleep(0.2)  # the backup is inside its wait; let it poll once at least
            pending.unlink()

    thread = threading.Thread(target=writer_finishes)
    thread.start()
    run = cli(s.config_path, "backup", "--json")
    thread.join()
    assert run.code == 0, run.err
    assert waiting.is_set() and not pending.exists()
    result = json.loads(run.out)
    assert result["lock_window_s"] >= 0.2
    assert not (s.volume / "global.lock").exists()
    doc = load_snapshot(s.repo(), result["snapshot"])
    assert doc.source("volume").metadata["waited_for_writes"] == 1


def test_backup_write_never_finishing_fails_and_removes_global_lock(tmp_path: Path) -> None:
    """A *.lock that outlives quiesce_timeout_s fails the backup; global.lock is removed and the
    writer's lock left alone."""
    s = make_setup(tmp_path, local_target(tmp_path), quiesce_timeout_s=0.5)
    generate(s.volume, users=10, seed=2)
    pending = s.volume / "meta.json.lock"
    pending.write_text("")
    run = cli(s.config_path, "backup")
    assert run.code == 1, run.err
    assert "in flight" in run.err
    assert not (s.volume / "global.lock").exists()
    assert pending.exists()
    assert snapshot_ids(s.repo()) == []


@pytest.mark.parametrize("content", [b"", b'{"created_by": "operator", "note": "maintenance"}'],
                         ids=["wicked-empty", "foreign-json"])
def test_backup_foreign_global_lock_exit_4_left_untouched(volume_setup: Setup,
                                                        content: bytes) -> None:
    """Somebody else's global.lock makes backup exit 4; the file stays byte- and time-identical."""
    s = volume_setup
    lock = s.volume / "global.lock"
    lock.write_bytes(content)
    os.utime(lock, ns=(1_000_000_000, 1_000_000_000))
    before = lock.stat()
    run = cli(s.config_path, "backup")
    assert run.code == 4, run.err
    assert "global" in run.err
    assert lock.read_bytes() == content
    after = lock.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def _lock_events(volume: Path) -> tuple[inotify_simple.INotify, Callable[[], list[str]]]:
    """An inotify watch of the volume folder and a reader of what happened to global.lock
    and to wicked-dr's temporary file it is linked from, in order ("<name> <event>"). Events,
    not polling: wicked-dr holds its global.lock for well under a millisecond now."""
    inotify = inotify_simple.INotify()
    mask = (inotify_simple.flags.CREATE | inotify_simple.flags.DELETE
            | inotify_simple.flags.MODIFY | inotify_simple.flags.ATTRIB)
    inotify.add_watch(str(volume), mask)

    def read() -> list[str]:
        seen = []
        for event in inotify.read(timeout=0):
            name = ".wicked-dr-tmp" if event.name.startswith(".wicked-dr-") else event.name
            if name in ("global.lock", ".wicked-dr-tmp"):
                kinds = [str(f.name).lower() for f in inotify_simple.flags.from_mask(event.mask)]
                seen.append(f"{name} {'+'.join(kinds)}")
        return seen

    return inotify, read


def test_backup_lock_wait_foreign_global_lock_removed_then_backup_runs(
        volume_setup: Setup) -> None:
    """backup --lock-wait 30s waits for somebody else's global.lock (never touching it); once
    its owner removes it, the backup takes its own, snapshots, and leaves no lock behind."""
    s = volume_setup
    lock = s.volume / "global.lock"
    foreign = b'{"created_by": "operator", "note": "maintenance"}'
    lock.write_bytes(foreign)
    inotify, events = _lock_events(s.volume)
    timer = threading.Timer(1.0, lock.unlink)
    timer.start()
    try:
        run = cli(s.config_path, "--lock-wait", "30s", "backup", "--json")
    finally:
        timer.join()
    seen = events()
    inotify.close()
    assert run.code == 0, run.err
    assert snapshot_ids(s.repo()) == [json.loads(run.out)["snapshot"]]
    assert not lock.exists()
    # Theirs is never written to; it goes; then ours (written to wicked-dr's temporary file
    # first, which every failed attempt meanwhile made and removed) is linked into place,
    # and removed at the end.
    on_lock = [event for event in seen if event.startswith("global.lock")]
    assert on_lock == ["global.lock delete", "global.lock create", "global.lock delete"], seen
    created = seen.index("global.lock create")
    assert seen[created - 2:created] == [".wicked-dr-tmp create", ".wicked-dr-tmp modify"], seen


def test_backup_lock_wait_foreign_global_lock_stays_exit_4_after_wait(
        volume_setup: Setup) -> None:
    """backup --lock-wait 1.5s with a foreign global.lock that stays exits 4, not before the
    wait is over; the lock is byte- and time-identical and no snapshot is written."""
    s = volume_setup
    lock = s.volume / "global.lock"
    lock.write_bytes(b"")
    os.utime(lock, ns=(1_000_000_000, 1_000_000_000))
    before = lock.stat()
    started = time.monotonic()
    run = cli(s.config_path, "backup", "--lock-wait", "1.5s")
    assert run.code == 4, run.err
    assert time.monotonic() - started >= 1.5
    assert "global.lock" in run.err
    assert lock.read_bytes() == b""
    after = lock.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert snapshot_ids(s.repo()) == []


def _our_style_lock(holder: Holder) -> bytes:
    return json.dumps({"created_by": "wicked-dr", "holder": holder.to_json(),
                       "created": time.time() - 5}).encode()


def test_backup_stale_global_lock_of_dead_run_removed(volume_setup: Setup) -> None:
    """A global.lock a killed wicked-dr left (holder pid gone) is removed; the backup runs."""
    s = volume_setup
    dead = Holder(socket.gethostname(), boot_id(), _dead_pid(), 1, "crashed")
    (s.volume / "global.lock").write_bytes(_our_style_lock(dead))
    run = cli(s.config_path, "backup", "--json")
    assert run.code == 0, run.err
    assert not (s.volume / "global.lock").exists()
    doc = load_snapshot(s.repo(), json.loads(run.out)["snapshot"])
    assert doc.source("volume").metadata["removed_stale_lock"] is True


def test_backup_global_lock_of_live_run_exit_4_left_untouched(volume_setup: Setup) -> None:
    """A global.lock held by a live wicked-dr process (this one) is respected: exit 4."""
    s = volume_setup
    content = _our_style_lock(current_holder())
    (s.volume / "global.lock").write_bytes(content)
    run = cli(s.config_path, "backup")
    assert run.code == 4, run.err
    assert (s.volume / "global.lock").read_bytes() == content


def test_backup_sigterm_while_quiescing_removes_global_lock(tmp_path: Path) -> None:
    """SIGTERM in the lock window: exit 130, global.lock removed (never left to block wicked)."""
    s = make_setup(tmp_path, local_target(tmp_path), quiesce_timeout_s=60)
    generate(s.volume, users=10, seed=2)
    pending = s.volume / "meta.json.lock"
    pending.write_text("")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(cli_command(s.config_path, "backup"), env=env, cwd=REPO_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not (s.volume / "global.lock").exists() and time.monotonic() < deadline:
            assert proc.poll() is None
            time.sleep(0.01)
        assert (s.volume / "global.lock").exists()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert not (s.volume / "global.lock").exists()
    assert pending.exists()


def test_backup_cli_lock_left_by_killed_backup_does_not_block(tmp_path: Path,
                                                              request: pytest.FixtureRequest
                                                              ) -> None:
    """A shared lock left by a dead backup neither blocks the next backup nor an exclusive
    holder (taken over: its holder is provably dead)."""
    target: RepoTarget = repo_target(request, tmp_path, "local")
    s = make_setup(tmp_path, target)
    generate(s.volume, users=10, seed=2)
    assert cli(s.config_path, "backup").code == 0
    repo = s.repo()
    dead = Holder(socket.gethostname(), boot_id(), _dead_pid(), 1, "dead")
    lock_id = _plant_lock(repo, dead, exclusive=False, expires_in=600)
    assert cli(s.config_path, "backup").code == 0
    held = acquire(repo, exclusive=True, operation="prune", wait_s=0, expiry_s=30)
    assert lock_id not in [x.lock_id for x in list_locks(repo)]
    held.release()
