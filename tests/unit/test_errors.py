"""The exception tree, its exit codes, the README's table, and the mapping at the CLI edge."""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.minimal import minimal_volume_and_config
from wicked_dr import errors
from wicked_dr.cli import main
from wicked_dr.errors import ConfigError, ExitCode, WickedDRError

REPO_ROOT = Path(__file__).resolve().parents[2]
README = REPO_ROOT / "README.md"
ERROR_PREFIX = "wicked-dr: error: "

# The contract of issue 2: which failure gives which exit code.
SPEC: dict[str, ExitCode] = {
    "WickedDRError": ExitCode.FAILED,
    "UsageError": ExitCode.USAGE,
    "ConfigError": ExitCode.USAGE,
    "OperationError": ExitCode.FAILED,
    "BackendError": ExitCode.FAILED,
    "RetryableBackendError": ExitCode.FAILED,
    "SourceError": ExitCode.FAILED,
    "DatabaseError": ExitCode.FAILED,
    "DockerError": ExitCode.FAILED,
    "HTTPError": ExitCode.FAILED,
    "IntegrityError": ExitCode.INTEGRITY,
    "WrongKeyError": ExitCode.INTEGRITY,
    "LockedError": ExitCode.LOCKED,
    "NotFoundError": ExitCode.NOT_FOUND,
    "RefusedError": ExitCode.REFUSED,
    "RolledBackError": ExitCode.ROLLED_BACK,
    "RollbackFailedError": ExitCode.ROLLBACK_FAILED,
    "FollowUpNeededError": ExitCode.FOLLOW_UP_NEEDED,
    "NotImplementedYetError": ExitCode.FAILED,
    "Interrupted": ExitCode.INTERRUPTED,
}
SPEC_CODES = {0: "success", 1: "operation failed", 2: "usage or configuration error",
              3: "integrity problem", 4: "locked", 5: "not found", 6: "refused",
              7: "rolled back", 8: "rollback failed", 9: "follow-up", 130: "interrupted"}


def _error_classes() -> dict[str, type[BaseException]]:
    """Every exception class errors.py defines."""
    return {name: cls for name, cls in inspect.getmembers(errors, inspect.isclass)
            if issubclass(cls, BaseException) and cls.__module__ == errors.__name__}


def _documented_tree() -> dict[str, tuple[str | None, int]]:
    """Class -> (parent in the docstring tree, exit code documented for it or inherited)."""
    doc = errors.__doc__ or ""
    found: dict[str, tuple[str | None, int]] = {}
    stack: list[tuple[int, str, int]] = []  # (depth, name, code)
    for line in doc.splitlines():
        match = re.match(r"^(?P<lead>[\s│├└─]*)(?P<name>[A-Z]\w+)\s+(?:\((?P<code>\d+)\))?",
                         line)
        if not match or not match.group("name").endswith(("Error", "Interrupted")):
            continue
        depth = len(match.group("lead"))
        while stack and stack[-1][0] >= depth:
            stack.pop()
        parent = stack[-1] if stack else None
        code = match.group("code")
        inherited = int(code) if code else (parent[2] if parent else ExitCode.FAILED)
        found[match.group("name")] = (parent[1] if parent else None, inherited)
        stack.append((depth, match.group("name"), inherited))
    return found


# --- the tree in code --------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "code"), sorted(SPEC.items()))
def test_exception_class_maps_to_specified_exit_code(name: str, code: ExitCode) -> None:
    """Each exception class carries the exit code the contract gives its kind of failure."""
    cls = getattr(errors, name)
    assert cls.exit_code == code


def test_exception_classes_all_covered_by_spec() -> None:
    """A new exception class must get a deliberate exit code here (and in the docs)."""
    names = set(_error_classes())
    assert names == set(SPEC)


def test_exception_docstring_tree_matches_classes_and_codes() -> None:
    """errors.py's documented tree names every class, its real parent and its exit code."""
    tree = _documented_tree()
    classes = _error_classes()
    assert set(tree) == set(SPEC), set(tree) ^ set(SPEC)
    for name, (parent, code) in tree.items():
        cls = classes[name]
        assert cls.exit_code == code, name  # type: ignore[attr-defined]
        if parent is not None:
            assert cls.__bases__[0].__name__ == parent, name


def test_exit_codes_are_the_specified_ones() -> None:
    """ExitCode has exactly the codes of the contract, with their numbers."""
    assert {int(code) for code in ExitCode} == set(SPEC_CODES)
    assert (ExitCode.OK, ExitCode.FAILED, ExitCode.USAGE, ExitCode.INTERRUPTED) == (0, 1, 2, 130)


def test_user_errors_derive_from_one_base() -> None:
    """Every error is a WickedDRError, so the CLI edge catches one type; Interrupted too (a
    cancelled token raises it at a safe point, in any thread), but under no failure class, so
    no ``except OperationError``/``IntegrityError`` that records a problem swallows it."""
    for name, cls in _error_classes().items():
        assert issubclass(cls, WickedDRError), name
    assert errors.Interrupted.__bases__ == (WickedDRError,)


def test_retryable_only_for_transient_backend_errors() -> None:
    """Only RetryableBackendError says a retry may help; everything else is permanent."""
    retryable = {name for name, cls in _error_classes().items()
                 if getattr(cls, "retryable", False)}
    assert retryable == {"RetryableBackendError"}
    assert errors.RetryableBackendError("slow down").retryable is True
    assert errors.BackendError("gone").retryable is False


def test_one_line_collapses_whitespace() -> None:
    """A message spanning lines becomes one line at the CLI edge."""
    error = errors.SourceError("cannot read\n  volume.path /x:\tpermission denied ")
    assert error.one_line() == "cannot read volume.path /x: permission denied"


def test_config_error_one_line_keeps_one_line_per_problem() -> None:
    """ConfigError prints each problem on its own line, and str() joins them."""
    error = ConfigError(["c.yaml: at 'a.b': bad", "c.yaml: at 'a.c': worse"])
    assert error.one_line().splitlines() == error.problems
    assert str(error) == "c.yaml: at 'a.b': bad; c.yaml: at 'a.c': worse"
    assert error.exit_code == 2


# --- the README ---------------------------------------------------------------------------------


def _readme_exit_codes() -> dict[int, str]:
    text = README.read_text(encoding="utf-8")
    section = re.split(r"^#+\s*exit codes\s*$", text, flags=re.IGNORECASE | re.MULTILINE)
    assert len(section) == 2, "README.md needs one '## Exit codes' heading"
    body = re.split(r"^#", section[1], maxsplit=1, flags=re.MULTILINE)[0]
    return {int(m.group(1)): m.group(2).strip()
            for m in re.finditer(r"^\|\s*`?(\d+)`?\s*\|\s*(.+?)\s*\|\s*$", body, re.MULTILINE)}


def test_readme_exit_code_table_matches_exit_code_enum() -> None:
    """The README's exit-code table lists exactly the codes of ExitCode."""
    table = _readme_exit_codes()
    assert set(table) == {int(code) for code in ExitCode}
    for code, meaning in table.items():
        assert meaning, code


def test_readme_exit_code_meanings_match_the_help_text(
        capsys: pytest.CaptureFixture[str]) -> None:
    """README and `--help` describe each exit code with the same first words."""
    with pytest.raises(SystemExit):
        main(["--help"])
    help_table = capsys.readouterr().out.split("exit codes:", 1)[1].split("\n\n", 1)[0]
    in_help = {int(m.group(1)): m.group(2)
               for m in re.finditer(r"^\s+(\d+)\s+(.+)$", help_table, re.MULTILINE)}
    for code, meaning in _readme_exit_codes().items():
        first_words = " ".join(re.findall(r"[a-z]+", meaning.lower())[:3])
        assert " ".join(re.findall(r"[a-z]+", in_help[code].lower())[:3]) == first_words, code


# --- the mapping at the CLI edge, through real failures ------------------------------------------


@pytest.fixture()
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config for a minimal wicked volume and a local repository; a clean environment."""
    for name in list(os.environ):
        if name.startswith("WICKED_DR_"):
            monkeypatch.delenv(name)
    return minimal_volume_and_config(tmp_path, "  quiesce_timeout_s: 60\n")


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith(ERROR_PREFIX)]
    assert len(lines) == 1, err
    return lines[0]


def test_cli_refused_guard_exits_6_and_creates_nothing(
        setup: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A volume that does not look like wicked's is refused with 6; no repository appears."""
    (setup.parent / "volume" / "users" / "_index.json").unlink()
    assert main(["--config", str(setup), "backup"]) == ExitCode.REFUSED
    assert "users/_index.json" in _one_error_line(capsys.readouterr().err)
    assert not (setup.parent / "repo").exists()


@pytest.mark.parametrize("force", [(), ("--force",)], ids=["guarded", "force"])
def test_cli_backup_missing_volume_path_names_key_exit_1(
        setup: Path, force: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    """A volume.path that does not exist says so and names the key (with --force too, which
    skips only the wicked-markers guard), not "run as uid 888 or root"; nothing is created."""
    volume = setup.parent / "volume"
    shutil.rmtree(volume)
    assert main(["--config", str(setup), "backup", *force]) == ExitCode.FAILED
    line = _one_error_line(capsys.readouterr().err)
    assert f"volume.path {volume} does not exist" in line
    assert "uid 888" not in line
    assert not volume.exists()
    assert not (setup.parent / "repo").exists()


def test_cli_foreign_global_lock_exits_4_and_is_left_alone(
        setup: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """wicked's global.lock held by someone else gives exit 4 and the lock is not touched."""
    lock = setup.parent / "volume" / "global.lock"
    lock.write_text("", encoding="utf-8")
    assert main(["--config", str(setup), "backup"]) == ExitCode.LOCKED
    assert "global.lock" in _one_error_line(capsys.readouterr().err)
    assert lock.is_file()


def test_cli_corrupt_pack_check_read_data_exits_3(
        setup: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A flipped byte in a pack makes `check --read-data` exit 3 naming the object."""
    assert main(["--config", str(setup), "backup"]) == 0
    packs = [p for p in (setup.parent / "repo" / "data").rglob("*") if p.is_file()]
    assert packs
    data = bytearray(packs[0].read_bytes())
    data[len(data) // 2] ^= 0xFF
    packs[0].write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["--config", str(setup), "check", "--read-data"]) == ExitCode.INTEGRITY
    assert packs[0].name in _one_error_line(capsys.readouterr().err)


def test_cli_writes_in_flight_past_timeout_exits_1(
        setup: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A file lock that outlives volume.quiesce_timeout_s fails with 1 and releases global.lock."""
    volume = setup.parent / "volume"
    (volume / "users" / "u1.json.lock").write_text("", encoding="utf-8")
    monkeypatch.setenv("WICKED_DR_VOLUME__QUIESCE_TIMEOUT_S", "0.2")
    assert main(["--config", str(setup), "backup"]) == ExitCode.FAILED
    assert "volume.quiesce_timeout_s" in _one_error_line(capsys.readouterr().err)
    assert not (volume / "global.lock").exists()


def _holds_global_lock(volume: Path) -> bool:
    """Whether wicked-dr's global.lock exists with its marker written."""
    try:
        return "wicked-dr" in (volume / "global.lock").read_text(encoding="utf-8")
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_cli_signal_during_backup_exits_130_and_releases_global_lock(
        setup: Path, signum: signal.Signals) -> None:
    """SIGINT/SIGTERM while waiting under global.lock exits 130, removes our global.lock, and
    a following backup is not blocked by a stale lock."""
    volume = setup.parent / "volume"
    writer_lock = volume / "users" / "u1.json.lock"
    writer_lock.write_text("", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WICKED_DR_")}
    command = [sys.executable, "-m", "wicked_dr.cli", "--config", str(setup), "--json",
               "backup"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=REPO_ROOT)
    try:
        deadline = time.monotonic() + 60
        while not _holds_global_lock(volume):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "backup never took global.lock"
            time.sleep(0.02)
        time.sleep(0.2)  # now waiting for the writer's lock, well inside the guarded block
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == ExitCode.INTERRUPTED, err
    assert _one_error_line(err) == f"{ERROR_PREFIX}interrupted"
    assert json.loads(out) == {"error": "interrupted", "exit_code": 130}
    assert not (volume / "global.lock").exists()
    assert writer_lock.exists()
    writer_lock.unlink()
    again = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO_ROOT,
                           timeout=120, check=False)
    assert again.returncode == 0, again.stderr
