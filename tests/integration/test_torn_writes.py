"""Consistency under a concurrent portal-api-like writer: with wicked's lock protocol no snapshot
holds a torn file; without it (the control) one does, which proves the check can fail."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.fixtures.repos import REPO_ROOT, Setup, backdate, cli, local_target, make_setup
from wicked_dr.testing.sample_volume import generate
from wicked_dr.testing.wicked_writer import is_torn

pytestmark = pytest.mark.integration
LOCKED_ROUNDS = 8
CONTROL_ATTEMPTS = 15


@contextmanager
def _writer(root: Path) -> Iterator[list[str]]:
    """The writer process (wicked's lock protocol, chunked in-place rewrites); yields its files."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "wicked_dr.testing.wicked_writer", str(root), "--seconds", "120",
         "--respect-locks", "--chunks", "8", "--chunk-sleep-ms", "3"],
        stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        assert ready["ready"]
        yield list(ready["files"])
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    counters = json.loads(out.splitlines()[-1])
    assert counters["writes"] > 0


def _snapshot_files(s: Setup, files: list[str], n: int) -> dict[str, bytes]:
    """Take a backup, restore it, return the writer's files as the snapshot holds them."""
    run = cli(s.config_path, "backup", "--json")
    assert run.code == 0, run.err
    snapshot = json.loads(run.out)["snapshot"]
    out = s.tmp / f"restore-{n}"
    run = cli(s.config_path, "restore", snapshot, "--target", str(out))
    assert run.code == 0, run.err
    assert not (out / "global.lock").exists()
    assert not list(out.rglob("*.lock"))
    return {rel: (out / rel).read_bytes() for rel in files}


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    s = make_setup(tmp_path, local_target(tmp_path), quiesce_timeout_s=10)
    generate(s.volume, users=150, seed=17)
    backdate(s.volume)
    return s


def test_backups_under_wicked_lock_never_hold_torn_files(setup: Setup) -> None:
    """Repeated backups with quiesce wicked-lock while the writer runs: every file is whole."""
    seen: dict[str, set[bytes]] = {}
    with _writer(setup.volume) as files:
        for n in range(LOCKED_ROUNDS):
            contents = _snapshot_files(setup, files, n)
            torn = [rel for rel, data in contents.items() if is_torn(data)]
            assert not torn, f"snapshot {n} holds torn files: {torn}"
            for rel, data in contents.items():
                seen.setdefault(rel, set()).add(data)
            time.sleep(0.05)
    # The writer really changed the files between snapshots (else the check proves nothing).
    assert sum(len(v) for v in seen.values()) > len(seen) * 2
    assert not (setup.volume / "global.lock").exists()


def test_backups_without_quiesce_catch_a_torn_file(setup: Setup) -> None:
    """The control: with quiesce none, some snapshot holds a torn file within a few tries."""
    setup.write(quiesce="none")
    caught: list[str] = []
    with _writer(setup.volume) as files:
        for n in range(CONTROL_ATTEMPTS):
            contents = _snapshot_files(setup, files, n)
            caught = [rel for rel, data in contents.items() if is_torn(data)]
            if caught:
                break
    assert caught, f"no torn file in {CONTROL_ATTEMPTS} unquiesced snapshots"
