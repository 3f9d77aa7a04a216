"""Work stopped from outside (issue #10): a cancelled token, from another thread as the daemon
will do it, or SIGTERM at the CLI. Whatever is cancelled, and wherever, the run unwinds
normally: wicked's global.lock and the repository lock are released, staging is removed and
no snapshot appears; a restore says its target is partial.

Every cancel lands at a known point (the job is waiting on its token, or a progress callback
or a ScriptedToken says which safe point it reached): no sleeps, no timing luck, and no
assertion on speed. Waits for the job have generous hang guards only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.repos import (
    BACKENDS,
    REPO_ROOT,
    RepoTarget,
    Setup,
    cli,
    cli_command,
    error_lines,
    local_target,
    make_setup,
    repo_target,
)
from tests.fixtures.threads import in_thread
from wicked_dr import cli as cli_module
from wicked_dr.actions.backup import BackupResult, run_backup
from wicked_dr.actions.check import run_check
from wicked_dr.actions.common import RunOptions
from wicked_dr.actions.export import run_export
from wicked_dr.actions.restore import run_restore_to_dir
from wicked_dr.cancel import CancelToken
from wicked_dr.config import Config, load_config
from wicked_dr.engine import restore as engine_restore
from wicked_dr.engine.catalog import snapshot_ids
from wicked_dr.errors import Interrupted
from wicked_dr.portal.quiesce import GLOBAL_LOCK
from wicked_dr.repository.locks import acquire, list_locks
from wicked_dr.testing.sample_volume import generate
from wicked_dr.testing.scripted_token import ScriptedToken

pytestmark = pytest.mark.integration
HANG_GUARD_S = 120.0


@pytest.fixture(params=BACKENDS)
def target(request: pytest.FixtureRequest, tmp_path: Path) -> RepoTarget:
    return repo_target(request, tmp_path)


def _config(s: Setup) -> Config:
    return load_config(s.config_path, {})


def _until(condition: Callable[[], bool], what: str) -> None:
    """Poll for a state the job must reach (a hang guard, not a speed bound)."""
    deadline = time.monotonic() + HANG_GUARD_S
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.005)


def _joined(thread: threading.Thread, results: list[object]) -> object:
    thread.join(HANG_GUARD_S)
    assert not thread.is_alive(), "the cancelled job did not end"
    assert len(results) == 1
    return results[0]


def _assert_left_nothing(s: Setup, snapshots_before: list[str]) -> None:
    """The guarantees of a cancelled backup: no global.lock, no repository lock, no new
    snapshot, no staging leftovers."""
    assert not (s.volume / GLOBAL_LOCK).exists()
    assert list_locks(s.repo()) == []
    assert snapshot_ids(s.repo()) == snapshots_before
    staging = s.state / "staging"
    assert not staging.exists() or list(staging.iterdir()) == []


def _packs(s: Setup) -> list[Path]:
    return [p for p in (Path(s.target.repository["url"]) / "data").rglob("*") if p.is_file()]


def _add_random_files(volume: Path, count: int, size: int) -> None:
    """Incompressible content: several packs at pack_size_mib 1."""
    (volume / "content").mkdir(exist_ok=True)
    for i in range(count):
        (volume / "content" / f"blob{i}.bin").write_bytes(os.urandom(size))


# --- backup ----------------------------------------------------------------------------------


def test_backup_cancelled_mid_scan_from_a_thread_releases_everything(
        tmp_path: Path, target: RepoTarget) -> None:
    """A backup on a worker thread, waiting under global.lock for a write in flight (the
    settle step, quiesce_timeout_s of 10 minutes), is cancelled: it raises Interrupted and
    leaves no global.lock, no repository lock, no new snapshot and no staging. The writer's
    own lock is left alone, and the next backup runs normally."""
    s = make_setup(tmp_path, target, quiesce_timeout_s=600)
    generate(s.volume, users=30, seed=5)
    first = run_backup(_config(s)).snapshot
    pending = s.volume / "users" / "in-flight.json.lock"
    pending.write_text("")
    token = ScriptedToken()
    thread, results = in_thread(lambda: run_backup(_config(s),
                                                    options=RunOptions(cancel=token)))
    # The grace period after taking global.lock is wait 1; the settle polls come after it.
    _until(lambda: (s.volume / GLOBAL_LOCK).exists() and token.waits >= 2,
           "the backup waits for the write in flight under global.lock")
    assert thread.is_alive() and len(list_locks(s.repo())) == 1
    token.cancel("test: stop the job")
    outcome = _joined(thread, results)
    assert isinstance(outcome, Interrupted), outcome
    assert outcome.exit_code == 130 and outcome.reason == "test: stop the job"
    _assert_left_nothing(s, [first])
    assert pending.exists()
    pending.unlink()
    again = run_backup(_config(s))
    assert snapshot_ids(s.repo()) == [first, again.snapshot]
    assert cli(s.config_path, "check").code == 0


def test_backup_cancelled_between_uploads_leaves_no_snapshot(tmp_path: Path) -> None:
    """Cancelled after its first upload (a pack): the commit stops before the next one, no
    snapshot object is written, and check passes (the uploaded pack is an unreferenced
    leftover, reported as harmless). The next backup is complete."""
    s = make_setup(tmp_path, local_target(tmp_path))
    s.target.repository["pack_size_mib"] = 1
    s.write()
    generate(s.volume, users=10, seed=6)
    _add_random_files(s.volume, 3, 700 * 1024)
    token = CancelToken()
    uploads: list[int] = []

    def progress(kind: str, size: int) -> None:
        if kind == "upload":
            uploads.append(size)
            token.cancel("test: after the first upload")

    with pytest.raises(Interrupted):
        run_backup(_config(s), options=RunOptions(progress=progress, cancel=token))
    assert len(uploads) == 1 and len(_packs(s)) == 1
    _assert_left_nothing(s, [])
    run = cli(s.config_path, "check", "--read-data", "--json")
    assert run.code == 0, run.err
    assert any("referenced by no index" in w for w in json.loads(run.out)["warnings"])
    result: BackupResult = run_backup(_config(s))
    assert snapshot_ids(s.repo()) == [result.snapshot]
    assert cli(s.config_path, "check", "--read-data").code == 0


def test_backup_cancelled_in_repository_lock_wait_holds_nothing(tmp_path: Path) -> None:
    """Another holder keeps an exclusive repository lock and the backup may wait an hour
    for it: a cancel ends the wait with Interrupted. The backup wrote no lock, never took
    global.lock, and the other holder's lock is untouched."""
    s = make_setup(tmp_path, local_target(tmp_path))
    generate(s.volume, users=10, seed=7)
    assert cli(s.config_path, "init").code == 0
    held = acquire(s.repo(), exclusive=True, operation="prune", wait_s=0, expiry_s=600)
    try:
        token = ScriptedToken()
        thread, results = in_thread(lambda: run_backup(
            _config(s), options=RunOptions(lock_wait_s=3600, cancel=token)))
        assert token.waiting.wait(HANG_GUARD_S)  # in the lock wait now
        token.cancel("test")
        outcome = _joined(thread, results)
        assert isinstance(outcome, Interrupted), outcome
        assert [lock.lock_id for lock in list_locks(s.repo())] == [held.info.lock_id]
        assert not (s.volume / GLOBAL_LOCK).exists()
        assert snapshot_ids(s.repo()) == []
    finally:
        held.release()
    assert list_locks(s.repo()) == []


def test_backup_cli_sigterm_in_repository_lock_wait_exits_130(tmp_path: Path) -> None:
    """backup --lock-wait 1h behind an exclusive holder: SIGTERM (once the backup says it is
    waiting) ends the wait; exit 130 with the one line "interrupted", no lock of its own left."""
    s = make_setup(tmp_path, local_target(tmp_path))
    generate(s.volume, users=10, seed=8)
    assert cli(s.config_path, "init").code == 0
    held = acquire(s.repo(), exclusive=True, operation="prune", wait_s=0, expiry_s=600)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(cli_command(s.config_path, "-v", "backup", "--lock-wait", "1h"),
                            env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        seen: list[str] = []
        while not any("repository locked; waiting" in line for line in seen):
            line = proc.stderr.readline()
            assert line, f"the backup ended before waiting: {seen}"
            seen.append(line)
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=HANG_GUARD_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        locks = [lock.lock_id for lock in list_locks(s.repo())]
        held.release()
    err = "".join(seen) + rest
    assert proc.returncode == 130, err
    assert [line for line in err.splitlines() if line.startswith("wicked-dr: error:")] == [
        "wicked-dr: error: interrupted"]
    assert locks == [held.info.lock_id]
    assert not (s.volume / GLOBAL_LOCK).exists()


# --- restore, check, export ------------------------------------------------------------------


def _backed_up(tmp_path: Path, **repository: object) -> Setup:
    s = make_setup(tmp_path, local_target(tmp_path))
    s.target.repository.update(repository)
    s.write()
    generate(s.volume, users=20, seed=9)
    _add_random_files(s.volume, 3, 700 * 1024)
    assert cli(s.config_path, "backup").code == 0
    return s


def test_restore_target_cancelled_between_files_says_target_is_partial(tmp_path: Path) -> None:
    """Cancelled after its first file: the restore stops before the next entry, raises
    Interrupted naming the target as partial, and what it wrote is whole (no torn file)."""
    s = _backed_up(tmp_path)
    restored = tmp_path / "restored"
    token = CancelToken()
    written: list[int] = []

    def progress(kind: str, size: int) -> None:
        written.append(size)
        token.cancel("test: after the first file")

    with pytest.raises(Interrupted) as caught:
        run_restore_to_dir(_config(s), "latest", restored, force=False, dry_run=False,
                           options=RunOptions(progress=progress, cancel=token))
    message = caught.value.one_line()
    assert message.startswith("interrupted")
    assert f"{restored} is partial" in message and "1 of " in message
    assert caught.value.exit_code == 130
    files = [p for p in restored.rglob("*") if p.is_file()]
    assert len(written) == len(files) == 1
    rel = files[0].relative_to(restored)
    assert files[0].read_bytes() == (s.volume / rel).read_bytes()


def test_restore_cli_sigterm_between_files_one_line_names_the_partial_target(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM at the CLI while restore --target writes its first file: the file is finished,
    the restore stops before the next entry, and the one error line (exit 130) says the
    target is partial."""
    s = _backed_up(tmp_path)
    restored = tmp_path / "restored"
    tokens: list[CancelToken] = []

    def new_token() -> CancelToken:
        tokens.append(CancelToken())
        return tokens[-1]

    original = engine_restore._restore_file
    files: list[str] = []

    def restore_file_then_sigterm(*args: Any) -> None:
        original(*args)
        files.append(str(args[2]))
        if len(files) == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # the CLI's watcher thread cancels the token
            _until(lambda: tokens[-1].cancelled, "SIGTERM cancelled the command's token")

    monkeypatch.setattr(cli_module, "CancelToken", new_token)
    monkeypatch.setattr(engine_restore, "_restore_file", restore_file_then_sigterm)
    run = cli(s.config_path, "restore", "latest", "--target", str(restored))
    assert run.code == 130, run.err
    assert len(files) == 1 and tokens[-1].reason == "SIGTERM"
    lines = error_lines(run)
    assert len(lines) == 1 and f"{restored} is partial" in lines[0], run.err


def test_check_cancelled_between_packs(tmp_path: Path) -> None:
    """check --read-data cancelled after its first pack reads no other and raises
    Interrupted (no report: a partial one would read like a clean check)."""
    s = _backed_up(tmp_path, pack_size_mib=1)
    token = CancelToken()
    read: list[int] = []

    def progress(kind: str, size: int) -> None:
        read.append(size)
        token.cancel("test: after the first pack")

    assert len(_packs(s)) >= 2
    with pytest.raises(Interrupted):
        run_check(_config(s), read_fraction=1.0,
                  options=RunOptions(progress=progress, cancel=token))
    assert len(read) == 1


def test_export_cancelled_between_entries_leaves_no_file(tmp_path: Path) -> None:
    """An export to a file cancelled at its fifth entry raises Interrupted; neither the tar
    nor its partial file is left (a file appears only whole)."""
    s = _backed_up(tmp_path)
    out = tmp_path / "out.tar"
    token = ScriptedToken(cancel_at_check=5)
    with pytest.raises(Interrupted, match="before the end of the tar"):
        run_export(_config(s), "latest", str(out), RunOptions(cancel=token))
    assert token.checks == 5
    assert sorted(p.name for p in tmp_path.iterdir() if "out" in p.name) == []
