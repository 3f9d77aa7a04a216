"""wicked's global.lock protocol as wicked-dr holds it while reading the volume."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from wicked_dr.cancel import CancelToken
from wicked_dr.errors import Interrupted, LockedError, OperationError
from wicked_dr.holder import Holder, boot_id, current_holder
from wicked_dr.portal.quiesce import GLOBAL_LOCK, MARKER, quiesced
from wicked_dr.testing.scripted_token import ScriptedToken


def _dead_holder() -> Holder:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return Holder(socket.gethostname(), boot_id(), proc.pid, 1, "crashed")


def _lock_body(holder: Holder, age_s: float = 5.0) -> bytes:
    return json.dumps({"created_by": MARKER, "holder": holder.to_json(),
                       "created": time.time() - age_s}).encode()


def test_quiesced_holds_marked_lock_and_removes_it(tmp_path: Path) -> None:
    """Inside the block global.lock exists, marked as ours; afterwards it is gone."""
    with quiesced(tmp_path, "wicked-lock", 1.0) as report:
        doc = json.loads((tmp_path / GLOBAL_LOCK).read_bytes())
        assert doc["created_by"] == MARKER
        assert doc["holder"]["instance"] == current_holder().instance
    assert not (tmp_path / GLOBAL_LOCK).exists()
    assert report.mode == "wicked-lock" and report.window_s > 0


def test_quiesced_exception_in_block_removes_lock(tmp_path: Path) -> None:
    """An error while reading still removes global.lock."""
    with pytest.raises(RuntimeError), quiesced(tmp_path, "wicked-lock", 1.0):
        raise RuntimeError("read failed")
    assert not (tmp_path / GLOBAL_LOCK).exists()


def test_quiesced_mode_none_creates_nothing(tmp_path: Path) -> None:
    """quiesce none never touches global.lock."""
    with quiesced(tmp_path, "none", 1.0) as report:
        assert not (tmp_path / GLOBAL_LOCK).exists()
    assert report.window_s == 0.0


def test_quiesced_settle_waits_for_file_locks(tmp_path: Path) -> None:
    """In-flight writes (<file>.lock) of a directory are waited for before it is read, and
    the caller is told to list it again; a quiet directory costs no wait."""
    (tmp_path / "users").mkdir()
    pending = tmp_path / "users" / "u.json.lock"
    pending.write_text("")
    # The writer finishes 0.3 s after the scan reached the directory, however long taking
    # global.lock took on a loaded machine; the timeout is far from any wait here.
    with quiesced(tmp_path, "wicked-lock", 120.0) as report:
        assert report.settle(str(tmp_path), os.listdir(tmp_path)) is False  # only global.lock
        started = time.monotonic()
        threading.Timer(0.3, pending.unlink).start()
        assert report.settle(str(tmp_path / "users"), ["u.json", "u.json.lock"]) is True
        assert not pending.exists()
    assert time.monotonic() - started >= 0.3
    assert report.waited_for_locks == 1


def test_quiesced_file_lock_outlives_timeout_fails_and_cleans_up(tmp_path: Path) -> None:
    """A write that never finishes: OperationError after the timeout, global.lock removed."""
    (tmp_path / "meta.json.lock").write_text("")
    with pytest.raises(OperationError, match="in flight"), \
            quiesced(tmp_path, "wicked-lock", 0.2) as report:
        report.settle(str(tmp_path), os.listdir(tmp_path))
        pytest.fail("reading must not start")
    assert not (tmp_path / GLOBAL_LOCK).exists()
    assert (tmp_path / "meta.json.lock").exists()


def test_settle_in_mode_none_never_waits(tmp_path: Path) -> None:
    """Without quiescing, lock files are not waited for (the torn-write control run)."""
    with quiesced(tmp_path, "none", 0.0) as report:
        assert report.settle(str(tmp_path), ["x.json.lock"]) is False
    assert report.waited_for_locks == 0


@pytest.mark.parametrize("content", [b"", b"garbage", b'{"created_by": "someone"}'])
def test_quiesced_foreign_lock_refused_untouched(tmp_path: Path, content: bytes) -> None:
    """Somebody else's global.lock: LockedError, and the file is left exactly as it was."""
    (tmp_path / GLOBAL_LOCK).write_bytes(content)
    with pytest.raises(LockedError), quiesced(tmp_path, "wicked-lock", 1.0):
        pytest.fail("the block must not run")
    assert (tmp_path / GLOBAL_LOCK).read_bytes() == content


def test_quiesced_stale_lock_of_dead_run_removed(tmp_path: Path) -> None:
    """Our marked lock whose holder died on this host is removed, then taken afresh."""
    (tmp_path / GLOBAL_LOCK).write_bytes(_lock_body(_dead_holder()))
    with quiesced(tmp_path, "wicked-lock", 1.0) as report:
        doc = json.loads((tmp_path / GLOBAL_LOCK).read_bytes())
        assert doc["holder"]["instance"] == current_holder().instance
    assert report.removed_stale is True
    assert not (tmp_path / GLOBAL_LOCK).exists()


def test_quiesced_lock_of_live_run_refused(tmp_path: Path) -> None:
    """Our marked lock held by a live process is respected."""
    body = _lock_body(current_holder())
    (tmp_path / GLOBAL_LOCK).write_bytes(body)
    with pytest.raises(LockedError, match="running"), quiesced(tmp_path, "wicked-lock", 1.0):
        pytest.fail("the block must not run")
    assert (tmp_path / GLOBAL_LOCK).read_bytes() == body


def test_quiesced_recent_lock_from_other_host_refused(tmp_path: Path) -> None:
    """A recent marked lock from another host (shared volume) is not removed."""
    other = Holder("other-host.example", "boot", 1, 1, "remote")
    body = _lock_body(other, age_s=60)
    (tmp_path / GLOBAL_LOCK).write_bytes(body)
    with pytest.raises(LockedError, match="other-host"), quiesced(tmp_path, "wicked-lock", 1.0):
        pytest.fail("the block must not run")
    assert (tmp_path / GLOBAL_LOCK).read_bytes() == body


def test_quiesced_lock_replaced_during_block_left_alone(tmp_path: Path) -> None:
    """If global.lock stops being ours while we read, we do not delete the new owner's file."""
    with quiesced(tmp_path, "wicked-lock", 1.0):
        (tmp_path / GLOBAL_LOCK).write_bytes(b"")  # portal-api restarted and someone re-locked
    assert (tmp_path / GLOBAL_LOCK).read_bytes() == b""


def test_quiesced_foreign_lock_gone_within_lock_wait_then_taken(tmp_path: Path) -> None:
    """With a lock wait, somebody else's global.lock is waited for (never touched); once it
    is gone, ours is taken and the block runs."""
    foreign = tmp_path / GLOBAL_LOCK
    foreign.write_bytes(b"")
    removed = threading.Event()

    def operator_unlocks() -> None:
        assert foreign.read_bytes() == b""  # still theirs, untouched, when they remove it
        foreign.unlink()
        removed.set()

    timer = threading.Timer(1.0, operator_unlocks)
    timer.start()
    try:
        with quiesced(tmp_path, "wicked-lock", 1.0, lock_wait_s=30.0):
            assert removed.is_set()
            doc = json.loads(foreign.read_bytes())
            assert doc["holder"]["instance"] == current_holder().instance
    finally:
        timer.join()
    assert not foreign.exists()


def test_quiesced_foreign_lock_outlives_lock_wait_locked_error_after_wait(
        tmp_path: Path) -> None:
    """A foreign global.lock that stays: LockedError only after the lock wait, naming the
    wait; the file is left exactly as it was."""
    foreign = tmp_path / GLOBAL_LOCK
    foreign.write_bytes(b"portal-api")
    before = foreign.stat()
    started = time.monotonic()
    with pytest.raises(LockedError, match=r"0\.8 s"), \
            quiesced(tmp_path, "wicked-lock", 1.0, lock_wait_s=0.8):
        pytest.fail("the block must not run")
    assert time.monotonic() - started >= 0.8
    after = foreign.stat()
    assert foreign.read_bytes() == b"portal-api"
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


# --- cancelled waits ---------------------------------------------------------------------------


def _quiesce_in_thread(run: Callable[[], None]) -> tuple[threading.Thread, list[BaseException]]:
    raised: list[BaseException] = []

    def target() -> None:
        try:
            run()
        except BaseException as exc:  # the test looks at it
            raised.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, raised


def test_cancelled_settle_wait_interrupted_global_lock_removed(tmp_path: Path) -> None:
    """A write in flight that outlives nothing but our patience: cancelling the token ends
    the settle wait at once (not after quiesce_timeout_s, an hour here) with Interrupted, and
    global.lock is removed; the writer's own lock is left alone."""
    (tmp_path / "users").mkdir()
    pending = tmp_path / "users" / "u.json.lock"
    pending.write_text("")
    token = ScriptedToken()
    settling = threading.Event()

    def backup() -> None:
        with quiesced(tmp_path, "wicked-lock", 3600.0, cancel=token) as report:
            token.waiting.clear()  # the grace period waited on the token too
            settling.set()
            report.settle(str(tmp_path / "users"), os.listdir(tmp_path / "users"))
            pytest.fail("reading must not start")

    thread, raised = _quiesce_in_thread(backup)
    assert settling.wait(60) and token.waiting.wait(60)
    assert (tmp_path / GLOBAL_LOCK).exists()  # the order: waiting under our global.lock
    token.cancel("test")
    thread.join(60)
    assert not thread.is_alive()
    assert len(raised) == 1 and isinstance(raised[0], Interrupted), raised
    assert not (tmp_path / GLOBAL_LOCK).exists()
    assert pending.exists()


def test_cancelled_wait_for_foreign_global_lock_interrupted_lock_untouched(
        tmp_path: Path) -> None:
    """Waiting (--lock-wait of an hour) for somebody else's global.lock: a cancel ends the
    wait with Interrupted; their file is left exactly as it was and ours never existed."""
    foreign = tmp_path / GLOBAL_LOCK
    foreign.write_bytes(b"portal-api")
    before = foreign.stat()
    token = ScriptedToken()

    def backup() -> None:
        with quiesced(tmp_path, "wicked-lock", 1.0, lock_wait_s=3600.0, cancel=token):
            pytest.fail("the block must not run")

    thread, raised = _quiesce_in_thread(backup)
    assert token.waiting.wait(60)
    token.cancel("test")
    thread.join(60)
    assert not thread.is_alive()
    assert len(raised) == 1 and isinstance(raised[0], Interrupted), raised
    after = foreign.stat()
    assert foreign.read_bytes() == b"portal-api"
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_cancelled_before_quiescing_never_takes_global_lock(tmp_path: Path) -> None:
    """A run cancelled before it got to the volume does not hold wicked's writers off."""
    token = CancelToken()
    token.cancel("test")
    with pytest.raises(Interrupted), quiesced(tmp_path, "wicked-lock", 1.0, cancel=token):
        pytest.fail("the block must not run")
    assert not (tmp_path / GLOBAL_LOCK).exists()
