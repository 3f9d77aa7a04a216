"""A damaged or hostile repository: restore, export and check say which object of which
snapshot is wrong and exit 3 (integrity), never 5 (not found) or an internal error; `check`
reports every problem as data, with --json too."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tarfile
from pathlib import Path

import pytest

from tests.fixtures.minimal import minimal_volume_and_config, repository_of
from tests.fixtures.repos import craft_snapshot
from wicked_dr.cli import main
from wicked_dr.engine.catalog import load_snapshot, snapshot_ids
from wicked_dr.errors import ExitCode
from wicked_dr.repository.layout import object_name
from wicked_dr.repository.manifest import iter_entries
from wicked_dr.repository.snapshot import Snapshot

ERROR_PREFIX = "wicked-dr: error: "


def _latest(config: Path) -> Snapshot:
    repo = repository_of(config)
    return load_snapshot(repo, snapshot_ids(repo)[-1])


def _delete(config: Path, kind: str) -> str:
    """Delete the latest snapshot's (first) tree, or a pack it needs; the object's id."""
    repo = repository_of(config)
    if kind == "tree":
        victim = _latest(config).trees[0]
        name = object_name("tree", victim)
    else:
        victim = repo.list_ids("data")[0]
        name = object_name("data", victim)
    repo.backend.delete(name)
    return str(victim)


def _run(config: Path, command: str, capsys: pytest.CaptureFixture[str],
         *extra: str) -> tuple[int, str, str]:
    """One command against the latest snapshot: (exit code, stdout, stderr)."""
    args = {"restore": ["restore", "latest", "--target", str(config.parent / "out")],
            "export": ["export", "latest", "--tar", str(config.parent / "out.tar")],
            "check": ["check"]}[command]
    code = main(["--config", str(config), *extra, *args])
    out, err = capsys.readouterr()
    return code, out, err


def _error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith(ERROR_PREFIX)]
    assert len(lines) == 1, err
    return lines[0]


# --- objects missing under a snapshot ---------------------------------------------------------


@pytest.mark.parametrize("kind", ["tree", "pack"])
@pytest.mark.parametrize("command", ["restore", "export"])
def test_restore_export_missing_object_integrity_error_exit_3(
        backed_up: Path, command: str, kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A tree or pack the snapshot needs is gone: exit 3 (integrity), naming the object and
    the snapshot, not 5 (which means: no such snapshot)."""
    snapshot_id = _latest(backed_up).id
    victim = _delete(backed_up, kind)
    code, _, err = _run(backed_up, command, capsys)
    line = _error_line(err)
    assert code == ExitCode.INTEGRITY, line
    assert victim in line and snapshot_id in line
    assert "missing" in line
    assert not (backed_up.parent / "out.tar").exists()


@pytest.mark.parametrize("command", ["restore", "export"])
def test_restore_export_missing_snapshot_stays_not_found_exit_5(
        backed_up: Path, command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A snapshot id that does not exist is still "not found" (exit 5)."""
    args = {"restore": ["--target", str(backed_up.parent / "out")],
            "export": ["--tar", str(backed_up.parent / "out.tar")]}[command]
    code = main(["--config", str(backed_up), command, "20000101T000000Z-00000000", *args])
    assert code == ExitCode.NOT_FOUND, capsys.readouterr().err


def test_check_missing_pack_names_snapshot_that_needs_it_exit_3(
        backed_up: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """check names the missing pack and the snapshot that cannot be restored without it."""
    snapshot_id = _latest(backed_up).id
    victim = _delete(backed_up, "pack")
    code, out, err = _run(backed_up, "check", capsys, "--json")
    assert code == ExitCode.INTEGRITY, err
    problems = json.loads(out)["problems"]
    assert {"object": f"pack {victim}", "message": "listed in an index but missing"} in problems
    about_snapshot = [p for p in problems if p["object"] == f"snapshot {snapshot_id}"]
    assert len(about_snapshot) == 1 and victim in about_snapshot[0]["message"], problems


# --- hostile manifest values -------------------------------------------------------------------


def _hostile_snapshot(config: Path, **values: int) -> str:
    """A snapshot like the latest one whose users/u1.json entry carries ``values``, sealed
    through the Repository API (what a tampered repository could hold)."""
    repo = repository_of(config)
    base = _latest(config)
    entries = [dataclasses.replace(e, **values) if e.path == "users/u1.json" else e
               for e in iter_entries(repo, base)]
    return craft_snapshot(repo, base, entries)


HOSTILE = [("mtime_ns", 10**30), ("mode", -1), ("uid", 2**40)]


@pytest.mark.parametrize(("field", "value"), HOSTILE, ids=[f for f, _ in HOSTILE])
@pytest.mark.parametrize("command", ["restore", "export"])
def test_restore_export_out_of_range_manifest_value_integrity_error_exit_3(
        backed_up: Path, command: str, field: str, value: int,
        capsys: pytest.CaptureFixture[str]) -> None:
    """An out-of-range mtime, mode or uid in a snapshot is an integrity error (exit 3) naming
    the entry and the value, not "internal error (OverflowError)" and never applied."""
    snapshot_id = _hostile_snapshot(backed_up, **{field: value})
    args = {"restore": ["--target", str(backed_up.parent / "out")],
            "export": ["--tar", str(backed_up.parent / "out.tar")]}[command]
    code = main(["--config", str(backed_up), command, snapshot_id, *args])
    line = _error_line(capsys.readouterr().err)
    assert code == ExitCode.INTEGRITY, line
    assert "'users/u1.json'" in line and f"{field} {value}" in line and snapshot_id in line
    assert "internal error" not in line
    assert not (backed_up.parent / "out" / "users" / "u1.json").exists()
    assert not (backed_up.parent / "out.tar").exists()


@pytest.mark.parametrize(("field", "value"), HOSTILE, ids=[f for f, _ in HOSTILE])
def test_check_out_of_range_manifest_value_reported_exit_3(
        backed_up: Path, field: str, value: int, capsys: pytest.CaptureFixture[str]) -> None:
    """check reports a hostile manifest value as a problem of its snapshot (exit 3)."""
    snapshot_id = _hostile_snapshot(backed_up, **{field: value})
    code, out, err = _run(backed_up, "check", capsys, "--json")
    assert code == ExitCode.INTEGRITY, err
    problems = json.loads(out)["problems"]
    assert [p["object"] for p in problems] == [f"snapshot {snapshot_id}"]
    assert "'users/u1.json'" in problems[0]["message"]


# --- check reports problems as data ------------------------------------------------------------


def test_check_json_with_problems_prints_structured_report_exit_3(
        backed_up: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`check --json` that finds problems prints the same report as a clean check (ok false,
    problems as a list of {object, message}) on stdout, one error line on stderr, exit 3."""
    code, out, _ = _run(backed_up, "check", capsys, "--json")
    assert code == 0
    clean = json.loads(out)
    victim = _delete(backed_up, "pack")
    code, out, err = _run(backed_up, "check", capsys, "--json")
    assert code == ExitCode.INTEGRITY, err
    report = json.loads(out)
    assert set(report) == set(clean)
    assert report["ok"] is False
    assert isinstance(report["problems"], list) and len(report["problems"]) >= 1
    for problem in report["problems"]:
        assert {"object", "message"} <= set(problem) and all(
            isinstance(problem[k], str) and problem[k] for k in ("object", "message"))
    assert any(p["object"] == f"pack {victim}" for p in report["problems"])
    assert victim in _error_line(err)


def test_check_human_with_problems_lists_each_problem_exit_3(
        backed_up: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without --json, a failed check lists every problem on stdout, one per line, and says
    it failed on stderr (exit 3)."""
    victim = _delete(backed_up, "pack")
    code, out, err = _run(backed_up, "check", capsys)
    assert code == ExitCode.INTEGRITY, err
    assert "no problems" not in out
    assert f"problem: pack {victim}: listed in an index but missing" in out.splitlines()
    assert _error_line(err).startswith(f"{ERROR_PREFIX}check found ")


# --- declared sizes and whole-file hashes -------------------------------------------------------

PART = 3 * 1024  # bytes of each genuine part file: one blob each


@pytest.fixture()
def parts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """A volume with three files of a few KiB (one blob each, distinct contents), backed up
    once; returns the config."""
    config = minimal_volume_and_config(tmp_path)
    for name in "abc":
        (tmp_path / "volume" / "users" / f"{name}.json").write_bytes(name.encode() * PART)
    assert main(["--config", str(config), "backup"]) == 0
    capsys.readouterr()
    return config


def _with_file(config: Path, *, size: int, blobs: tuple[str, ...], sha256: str) -> str:
    """A snapshot like the latest one with one more file, users/big.json, declaring ``size``
    and ``sha256`` over ``blobs``; sealed through the Repository API."""
    repo = repository_of(config)
    base = _latest(config)
    entries = list(iter_entries(repo, base))
    model = next(e for e in entries if e.path == "users/a.json")
    big = dataclasses.replace(model, path="users/big.json", size=size, sha256=sha256,
                              blobs=blobs)
    return craft_snapshot(repo, base, sorted([*entries, big], key=lambda e: e.path))


def _part_blobs(config: Path) -> tuple[str, ...]:
    """The blob ids of users/a.json, b.json and c.json (their SHA-256: one blob each)."""
    by_path = {e.path: e for e in iter_entries(repository_of(config), _latest(config))}
    return tuple(str(by_path[f"users/{n}.json"].sha256) for n in "abc")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


ALL_PARTS = b"a" * PART + b"b" * PART + b"c" * PART


def _run_on(config: Path, command: str, snapshot_id: str,
            capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    args = {"restore": ["--target", str(config.parent / "out")],
            "export": ["--tar", str(config.parent / "out.tar")]}[command]
    code = main(["--config", str(config), command, snapshot_id, *args])
    return code, _error_line(capsys.readouterr().err) if code else ""


@pytest.mark.parametrize("command", ["restore", "export"])
def test_restore_export_blobs_beyond_declared_size_integrity_error_exit_3(
        parts: Path, command: str, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An entry whose blobs hold more than its declared size (hash matching the blobs) is an
    integrity error naming the entry (exit 3); never a byte beyond the size is written, and
    no file or tar is left."""
    import wicked_dr.engine.restore as restore_module

    largest: dict[str, int] = {}
    original = restore_module._write_all

    def spy(fd: int, data: bytes) -> None:
        original(fd, data)
        path = os.readlink(f"/proc/self/fd/{fd}")
        largest[path] = max(largest.get(path, 0), os.fstat(fd).st_size)

    monkeypatch.setattr(restore_module, "_write_all", spy)
    snapshot_id = _with_file(parts, size=10, blobs=_part_blobs(parts), sha256=_sha(ALL_PARTS))
    code, line = _run_on(parts, command, snapshot_id, capsys)
    assert code == ExitCode.INTEGRITY, line
    assert "users/big.json" in line and "10" in line
    big = str(parts.parent / "out" / "users" / "big.json")
    assert largest.get(big, 0) <= 10
    assert not Path(big).exists()
    assert not (parts.parent / "out.tar").exists()


@pytest.mark.parametrize("command", ["restore", "export"])
def test_restore_export_blobs_short_of_declared_size_integrity_error_exit_3(
        parts: Path, command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """An entry whose blobs hold less than its declared size (hash matching the blobs) is an
    integrity error naming the entry (exit 3), and no file or tar is left."""
    size = len(ALL_PARTS) + 5
    snapshot_id = _with_file(parts, size=size, blobs=_part_blobs(parts),
                             sha256=_sha(ALL_PARTS))
    code, line = _run_on(parts, command, snapshot_id, capsys)
    assert code == ExitCode.INTEGRITY, line
    assert "users/big.json" in line and str(size) in line
    assert not (parts.parent / "out" / "users" / "big.json").exists()
    assert not (parts.parent / "out.tar").exists()


@pytest.mark.parametrize("content", [b"a" * PART, b""], ids=["one-blob", "empty"])
def test_export_sha256_mismatch_integrity_error_exit_3(
        parts: Path, content: bytes, capsys: pytest.CaptureFixture[str]) -> None:
    """export checks each file's whole SHA-256, empty files too: content of the declared size
    under another hash is an integrity error naming the entry (exit 3), the tar removed."""
    blobs = (_part_blobs(parts)[0],) if content else ()
    snapshot_id = _with_file(parts, size=len(content), blobs=blobs, sha256=_sha(b"other"))
    code, line = _run_on(parts, "export", snapshot_id, capsys)
    assert code == ExitCode.INTEGRITY, line
    assert "users/big.json" in line and "SHA-256" in line
    assert not (parts.parent / "out.tar").exists()


@pytest.mark.parametrize("command", ["restore", "export"])
def test_restore_export_file_of_several_small_blobs_restored_whole_exit_0(
        parts: Path, command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A file made of several blobs of a few KiB (not the writer's 4 MiB) with its true size
    and hash comes back whole, from restore and from export."""
    snapshot_id = _with_file(parts, size=len(ALL_PARTS), blobs=_part_blobs(parts),
                             sha256=_sha(ALL_PARTS))
    code, line = _run_on(parts, command, snapshot_id, capsys)
    assert code == 0, line
    if command == "restore":
        assert (parts.parent / "out" / "users" / "big.json").read_bytes() == ALL_PARTS
    else:
        with tarfile.open(parts.parent / "out.tar") as tar:
            member = tar.extractfile("users/big.json")
            assert member is not None and member.read() == ALL_PARTS
