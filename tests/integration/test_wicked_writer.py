"""The wicked-style concurrent writer: torn-file detection and wicked's lock protocol."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from wicked_dr.testing.sample_volume import generate
from wicked_dr.testing.wicked_writer import (
    _dumps,
    default_files,
    is_torn,
    one_instant_problem,
    read_log,
    with_marker,
)

REPO = Path(__file__).resolve().parents[2]


def _doc(generation: int, padding: str) -> bytes:
    return _dumps(with_marker({"id": "u1", "email": "a@example.com"}, generation,
                              padding)).encode()


def test_is_torn_whole_marked_documents_accepted() -> None:
    """A whole marked object or array, and an unmarked valid document, are not torn."""
    assert not is_torn(_doc(1, "ab" * 500))
    assert not is_torn(_dumps(with_marker([{"id": "e1"}], 2, "cd" * 100)).encode())
    assert not is_torn(b'{\n  "dynamicVersion": 11\n}')


def test_is_torn_truncated_document_detected() -> None:
    """Every proper prefix of a marked document is torn, including the empty file."""
    data = _doc(1, "ab" * 200)
    for cut in range(0, len(data), 37):
        assert is_torn(data[:cut]), cut


def test_is_torn_mixed_generations_detected() -> None:
    """Head of one generation + tail of another parses as JSON but is torn."""
    old, new = _doc(1, "a" * 1000), _doc(2, "b" * 1000)
    assert len(old) == len(new)
    split = old.index(b"a" * 1000) + 500
    mixed = new[:split] + old[split:]
    json.loads(mixed)  # valid JSON: only the digest can tell
    assert is_torn(mixed)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_one_instant_accepts_states_that_existed_and_refuses_the_others() -> None:
    """Log: 1 a->A1, 2 b->B1, 3 a->A2. The folder stood at (A0,B0), (A1,B0), (A1,B1) and
    (A2,B1); (A2,B0) and (A0,B1) never existed, nor a content nobody wrote."""
    a0, a1, a2, b0, b1 = b"a0", b"a1", b"a2", b"b0", b"b1"
    log = [(1, "a", _sha(a1)), (2, "b", _sha(b1)), (3, "a", _sha(a2))]
    originals = {"a": a0, "b": b0}
    for a, b in ((a0, b0), (a1, b0), (a1, b1), (a2, b1)):
        assert one_instant_problem({"a": a, "b": b}, originals, log) is None, (a, b)
    assert "no single instant" in str(one_instant_problem({"a": a2, "b": b0}, originals, log))
    assert "no single instant" in str(one_instant_problem({"a": a0, "b": b1}, originals, log))
    assert "never wrote" in str(one_instant_problem({"a": b"torn", "b": b1}, originals, log))


def test_version_log_is_written_by_the_writer(volume: Path, tmp_path: Path) -> None:
    """--log: every version written is logged (sequence, file, SHA-256) and the files hold
    the last logged version once the writer stopped."""
    log = tmp_path / "versions.log"
    proc = subprocess.run(
        [sys.executable, "-m", "wicked_dr.testing.wicked_writer", str(volume), "--seconds",
         "0.5", "--log", str(log), "--rename"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60, check=True)
    files = json.loads(proc.stdout.splitlines()[0])["files"]
    versions = read_log(log)
    assert [v[0] for v in versions] == list(range(1, len(versions) + 1))
    for rel in files:
        last = [sha for _, path, sha in versions if path == rel][-1]
        assert _sha((volume / rel).read_bytes()) == last, rel
    assert not list(volume.rglob("*.tmp-*"))


def test_is_torn_garbage_detected() -> None:
    """Bytes that are not UTF-8 JSON are torn."""
    assert is_torn(b"\x00\x00\x00")
    assert is_torn(b'{"id": "u1"')


def _hashes(root: Path, files: list[str]) -> dict[str, str]:
    return {f: hashlib.sha256((root / f).read_bytes()).hexdigest() for f in files}


def _file_locks(root: Path) -> list[Path]:
    return [p for p in root.rglob("*.lock") if p.name != "global.lock"]


@contextmanager
def _writer(root: Path, *args: str) -> Iterator[subprocess.Popen[str]]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "wicked_dr.testing.wicked_writer", str(root), *args],
        stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        assert json.loads(proc.stdout.readline())["ready"]
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _wait_for_change(root: Path, files: list[str], before: dict[str, str],
                     timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _hashes(root, files) != before:
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    root = tmp_path / "dynamic"
    generate(root, 30, seed=1)
    return root


def test_writer_respecting_locks_global_lock_held_changes_nothing(volume: Path) -> None:
    """While global.lock exists no file changes; once it is gone, writes resume."""
    files = default_files(volume)
    (volume / "global.lock").write_text("")
    before = _hashes(volume, files)
    with _writer(volume, "--seconds", "30", "--respect-locks") as proc:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            assert not _file_locks(volume)
            assert _hashes(volume, files) == before
            time.sleep(0.01)
        (volume / "global.lock").unlink()
        assert _wait_for_change(volume, files, before, 60.0)
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    counters = json.loads(out.splitlines()[-1])
    assert counters["backoffs_global"] > 0 and counters["writes"] > 0
    assert not any(is_torn((volume / f).read_bytes()) for f in files)


def test_writer_ignoring_locks_global_lock_held_still_writes(volume: Path) -> None:
    """With --ignore-locks the writer rewrites files despite global.lock (the control case)."""
    files = default_files(volume)
    (volume / "global.lock").write_text("")
    before = _hashes(volume, files)
    with _writer(volume, "--seconds", "30", "--ignore-locks"):
        assert _wait_for_change(volume, files, before, 60.0)


def test_writer_respecting_locks_file_lock_present_skips_that_file(volume: Path) -> None:
    """A pending <file>.lock makes the writer back off from that file only."""
    files = default_files(volume)
    locked = files[-1]
    (volume / f"{locked}.lock").write_text("")
    before = _hashes(volume, files)
    with _writer(volume, "--seconds", "30", "--respect-locks"):
        time.sleep(1.0)
    after = _hashes(volume, files)
    assert after[locked] == before[locked]
    assert all(after[f] != before[f] for f in files if f != locked)
    assert (volume / f"{locked}.lock").exists()


def test_writer_unlocked_reader_sees_torn_files(volume: Path) -> None:
    """Reading without any lock while the writer runs catches torn files (tears are likely)."""
    files = default_files(volume)
    torn = 0
    with _writer(volume, "--seconds", "30", "--respect-locks"):
        # Until three tears are seen: a loaded machine takes longer, never fails the test.
        deadline = time.monotonic() + 25.0
        while time.monotonic() < deadline and torn < 3:
            torn += sum(is_torn((volume / f).read_bytes()) for f in files)
    assert torn >= 3
    assert not any(is_torn((volume / f).read_bytes()) for f in files)
