"""Consistency under a concurrent portal-api-like writer (``wicked_dr/testing/wicked_writer``,
a real process following wicked's lock protocol).

A backup reads the volume without wicked's lock, then re-reads under it only what changed:
named by the change watch, or found by re-statting every file (``volume.watch: false``, or a
watch that overflowed). Every snapshot must be the folder at one instant: each of the
writer's files whole, a version the writer logged, and no file older than a version another
file's content proves was written before (``one_instant_problem``). The control skips the
locked phase (quiesce none) and must catch a torn file, which proves the check can fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.before_lock import before_the_lock
from tests.fixtures.repos import REPO_ROOT, Setup, backdate, cli, local_target, make_setup
from wicked_dr.actions.backup import run_backup
from wicked_dr.config import load_config
from wicked_dr.engine.catalog import load_snapshot
from wicked_dr.testing.sample_volume import generate
from wicked_dr.testing.wicked_writer import is_torn, one_instant_problem, read_log

pytestmark = pytest.mark.integration
LOCKED_ROUNDS = 8
CONTROL_ATTEMPTS = 15


@dataclass
class Writing:
    """The writer process's files, their contents before it started, and its version log."""

    files: list[str]
    originals: dict[str, bytes]
    log: Path


@contextmanager
def _writer(root: Path, *extra: str, chunks: int = 2) -> Iterator[Writing]:
    """The writer process (wicked's lock protocol; each version written in ``chunks`` parts
    with a pause between: two halves by default)."""
    log = root.parent / f"writer-{time.monotonic_ns()}.log"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "wicked_dr.testing.wicked_writer", str(root), "--seconds", "120",
         "--respect-locks", "--chunks", str(chunks), "--chunk-sleep-ms", "3", "--log", str(log),
         *extra],
        stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        assert ready["ready"]
        files = list(ready["files"])
        # Read before any write: the writer logs a version before writing it, under its lock.
        yield Writing(files, {rel: (root / rel).read_bytes() for rel in files}, log)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    counters = json.loads(out.splitlines()[-1])
    assert counters["writes"] > 0


@dataclass
class Taken:
    """One backup: the writer's files as its snapshot holds them, and what it reported."""

    contents: dict[str, bytes]
    result: dict[str, object]
    metadata: dict[str, object]
    names: list[str]
    unparsable: list[str]  # JSON files of the snapshot that do not parse


def _take(s: Setup, files: list[str], n: int) -> Taken:
    """Take a backup, restore it, return the writer's files as the snapshot holds them."""
    run = cli(s.config_path, "backup", "--json")
    assert run.code == 0, run.err
    return _restored(s, json.loads(run.out), files, n)


def _restored(s: Setup, result: dict[str, object], files: list[str], n: int) -> Taken:
    """Snapshot ``result["snapshot"]`` restored: the writer's files, what the snapshot says
    of itself, and its JSON files that do not parse."""
    snapshot = str(result["snapshot"])
    out = s.tmp / f"restore-{n}"
    run = cli(s.config_path, "restore", snapshot, "--target", str(out))
    assert run.code == 0, run.err
    assert not (out / "global.lock").exists()
    assert not list(out.rglob("*.lock"))
    metadata = dict(load_snapshot(s.repo(), snapshot).source("volume").metadata)
    names = [str(p.relative_to(out)) for p in out.rglob("*")]
    unparsable = [name for name in names if name.endswith(".json") and _unparsable(out / name)]
    return Taken({rel: (out / rel).read_bytes() for rel in files}, result, metadata, names,
                 unparsable)


def _unparsable(path: Path) -> bool:
    try:
        json.loads(path.read_bytes())
    except ValueError:
        return True
    return False


def _assert_one_instant(taken: Taken, writing: Writing, n: int) -> None:
    torn = [rel for rel, data in taken.contents.items() if is_torn(data)]
    assert not torn, f"snapshot {n} holds torn files: {torn}"
    problem = one_instant_problem(taken.contents, writing.originals, read_log(writing.log))
    assert problem is None, f"snapshot {n}: {problem}"
    assert not taken.unparsable, f"snapshot {n}: JSON that does not parse: {taken.unparsable}"


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    s = make_setup(tmp_path, local_target(tmp_path), quiesce_timeout_s=10)
    generate(s.volume, users=150, seed=17)
    backdate(s.volume)
    return s


@pytest.mark.parametrize("watch", [True, False], ids=["watch", "restat"])
def test_every_snapshot_is_the_volume_at_one_instant(setup: Setup, watch: bool) -> None:
    """Repeated backups while the writer rewrites files in two halves: every file of every
    snapshot is whole and the set is one instant's; the locked phase re-read what changed,
    known from the watch or by re-statting, and held the lock only for that."""
    setup.write(watch=watch)
    seen: dict[str, set[bytes]] = {}
    reread = 0
    with _writer(setup.volume) as writing:
        for n in range(LOCKED_ROUNDS):
            taken = _take(setup, writing.files, n)
            _assert_one_instant(taken, writing, n)
            assert taken.metadata["recheck"] == ("watch" if watch else "stat")
            assert taken.metadata["reread_under_lock"] == taken.result["files_reread_under_lock"]
            reread += int(str(taken.result["files_reread_under_lock"]))
            for rel, data in taken.contents.items():
                seen.setdefault(rel, set()).add(data)
            time.sleep(0.05)
    # The writer really changed the files between snapshots and while they were read (else
    # the checks prove nothing).
    assert sum(len(v) for v in seen.values()) > len(seen) * 2
    assert reread > 0
    assert not (setup.volume / "global.lock").exists()


@pytest.mark.parametrize("watch", [True, False], ids=["watch", "restat"])
def test_files_replaced_by_rename_are_one_instant(setup: Setup, watch: bool) -> None:
    """A writer that writes a temporary file and renames it over the target (a new inode):
    the snapshot holds the version that stood at the instant, and none of the temporary
    files (gone by then) although the unlocked read may have met them."""
    setup.write(watch=watch)
    with _writer(setup.volume, "--rename") as writing:
        for n in range(LOCKED_ROUNDS // 2):
            taken = _take(setup, writing.files, n)
            _assert_one_instant(taken, writing, n)
            assert not [name for name in taken.names if ".tmp-" in name], taken.names


def _attribute_changes(root: Path, count: int) -> None:
    """``count`` inotify events: chmods that alternate between two files (consecutive equal
    events would be merged into one by the kernel)."""
    users = sorted((root / "users").glob("*.json"))[:2]
    for i in range(count):
        os.chmod(users[i % 2], 0o644)


def test_a_watch_that_overflowed_falls_back_to_restat(
        setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel's event queue overflows while the volume is read: the locked phase does
    not trust the watch and re-stats every file instead; the snapshots stay one instant's.

    The overflow is made, not waited for: just before each backup takes wicked's lock (a
    writer busy right up to it), twice the kernel's queue of events are caused, in this
    process, while the real writer process keeps writing."""
    queue = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    overflow = before_the_lock(monkeypatch, lambda: _attribute_changes(setup.volume, 2 * queue))
    with overflow, _writer(setup.volume) as writing:
        for n in range(3):
            result = run_backup(load_config(setup.config_path)).to_json()
            taken = _restored(setup, result, writing.files, n)
            _assert_one_instant(taken, writing, n)
            assert taken.metadata["recheck"] == "stat", taken.metadata


def test_backups_without_quiesce_catch_a_torn_file(setup: Setup) -> None:
    """The control: with quiesce none, some snapshot holds a torn file within a few tries."""
    setup.write(quiesce="none")
    caught: list[str] = []
    with _writer(setup.volume) as writing:
        for n in range(CONTROL_ATTEMPTS):
            contents = _take(setup, writing.files, n).contents
            caught = [rel for rel, data in contents.items() if is_torn(data)]
            if caught:
                break
    assert caught, f"no torn file in {CONTROL_ATTEMPTS} unquiesced snapshots"
