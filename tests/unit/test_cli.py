"""The command-line contract: commands, global options, exit codes and error output."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.fixtures.services import service_missing
from wicked_dr import __version__
from wicked_dr.cli import build_parser, main
from wicked_dr.errors import ExitCode

REPO_ROOT = Path(__file__).resolve().parents[2]
ERROR_PREFIX = "wicked-dr: error: "
COMMANDS = ["init", "backup", "snapshots", "check", "export", "restore", "verify", "drill", "prune",
            "kong-resync", "daemon", "config", "verify-data"]


def _tree(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under root (directories as 'dir')."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): ("dir" if p.is_dir() else
                                       hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*"))}


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("WICKED_DR_")}


def _run(args: list[str], *, console_script: bool = False,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real program in a child process, stdin not a terminal."""
    if console_script:
        command = [str(_console_script())]
    else:
        command = [sys.executable, "-m", "wicked_dr.cli"]
    return subprocess.run([*command, *args], capture_output=True, text=True,
                          env={**_env(), **(env or {})},
                          cwd=REPO_ROOT, stdin=subprocess.DEVNULL, timeout=120, check=False)


def _console_script() -> Path:
    """The ``wicked-dr`` script the project's set-up installed beside the interpreter running
    the tests (``.venv/bin``); never whatever else happens to be on PATH."""
    script = Path(sys.executable).parent / "wicked-dr"
    if not script.is_file():
        pytest.fail(f"{script} is missing: the package is not installed in this interpreter's "
                    "environment; run scripts/test-env.sh (pip install -e .)")
    return script


def _help_text(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 0
    return capsys.readouterr().out


# --- help and version --------------------------------------------------------------------------


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    """--help names every command of the contract."""
    text = _help_text(["--help"], capsys)
    for command in COMMANDS:
        assert re.search(rf"^\s+{re.escape(command)}\s", text, re.MULTILINE), command


def test_help_exit_code_table_matches_exit_code_enum(capsys: pytest.CaptureFixture[str]) -> None:
    """The exit-code table in --help lists exactly the codes of ExitCode."""
    text = _help_text(["--help"], capsys)
    table = text.split("exit codes:", 1)[1].split("\n\n", 1)[0]
    codes = {int(m.group(1)) for m in re.finditer(r"^\s+(\d+)\s+\S", table, re.MULTILINE)}
    assert codes == {int(code) for code in ExitCode}


def test_help_global_options_documented(capsys: pytest.CaptureFixture[str]) -> None:
    """--help documents the global options --config, --json, -v/-q and --lock-wait."""
    text = _help_text(["--help"], capsys)
    for option in ("--config", "--json", "--verbose", "--quiet", "--lock-wait", "--version"):
        assert option in text, option


def test_help_subprocess_console_script_exits_0() -> None:
    """The installed `wicked-dr --help` works and exits 0."""
    proc = _run(["--help"], console_script=True)
    assert proc.returncode == 0, proc.stderr
    assert "exit codes:" in proc.stdout
    assert "kong-resync" in proc.stdout


def test_version_prints_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    """--version prints 'wicked-dr <version>' and exits 0."""
    assert _help_text(["--version"], capsys).strip() == f"wicked-dr {__version__}"


def test_version_matches_installed_metadata() -> None:
    """The version the CLI prints is the one the package metadata declares."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("wicked-dr")
    except PackageNotFoundError:
        service_missing("the installed wicked-dr package", "pip install -e .")
    proc = _run(["--version"])
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"wicked-dr {installed}"


def test_no_command_prints_help_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    """Without a command the help is shown and the exit code says usage error."""
    assert main([]) == 2
    assert "usage: wicked-dr" in capsys.readouterr().out


# --- usage errors -------------------------------------------------------------------------------


def test_unknown_command_is_usage_error_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown command is exit 2 with one 'wicked-dr: error:' line on stderr."""
    assert main(["bakup"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(ERROR_PREFIX)
    assert "bakup" in lines[0]


def test_unknown_option_subprocess_one_line_exit_2() -> None:
    """A real process prints one prefixed line and exits 2 for an unknown option."""
    proc = _run(["backup", "--frobnicate"])
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(ERROR_PREFIX)
    assert "--frobnicate" in lines[0]


def test_export_without_tar_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """export needs --tar FILE|-."""
    assert main(["export", "latest"]) == 2
    assert "--tar" in capsys.readouterr().err


def test_check_read_data_and_subset_together_is_usage_error(
        capsys: pytest.CaptureFixture[str]) -> None:
    """--read-data and --read-data-subset exclude each other."""
    assert main(["check", "--read-data", "--read-data-subset", "10%"]) == 2
    assert capsys.readouterr().err.startswith(ERROR_PREFIX)


@pytest.mark.parametrize(("text", "share"), [("10%", 0.10), ("2.5%", 0.025), ("100", 1.0)])
def test_check_read_data_subset_parses_percent(text: str, share: float) -> None:
    """--read-data-subset N% becomes a share between 0 and 1."""
    args = build_parser().parse_args(["check", "--read-data-subset", text])
    assert args.read_data_subset == pytest.approx(share)


@pytest.mark.parametrize("text", ["0%", "101%", "ten", "-5%"])
def test_check_read_data_subset_out_of_range_is_usage_error(
        text: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A share outside (0, 100] % is a usage error, exit 2."""
    assert main(["check", f"--read-data-subset={text}"]) == 2
    assert "invalid share" in capsys.readouterr().err


@pytest.mark.parametrize(("text", "seconds"), [("5m", 300.0), ("30s", 30.0), ("90", 90.0),
                                               ("1h", 3600.0), ("1.5m", 90.0)])
def test_lock_wait_duration_parses_before_and_after_command(text: str, seconds: float) -> None:
    """--lock-wait DURATION is accepted as a global option on either side of the command."""
    before = build_parser().parse_args(["--lock-wait", text, "backup"])
    after = build_parser().parse_args(["backup", "--lock-wait", text])
    assert before.lock_wait == after.lock_wait == seconds


def test_lock_wait_default_is_no_wait() -> None:
    """Without --lock-wait the lock is not waited for."""
    assert build_parser().parse_args(["backup"]).lock_wait == 0.0


@pytest.mark.parametrize("argv", [["--lock-wait", "soon", "backup"],
                                  ["backup", "--lock-wait", "soon"]])
def test_lock_wait_invalid_duration_is_usage_error(
        argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """--lock-wait soon is a usage error with exit 2 and says what a duration looks like."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(ERROR_PREFIX)
    assert "'soon'" in err
    assert "5m" in err


def test_global_options_after_command_do_not_reset_earlier_ones() -> None:
    """--json and --config given before the command survive the command's own parsing."""
    args = build_parser().parse_args(["--json", "--config", "/x.yaml", "--lock-wait", "1m",
                                      "snapshots"])
    assert args.json is True
    assert args.config == "/x.yaml"
    assert args.lock_wait == 60.0


# --- global options on either side of the command, for real ------------------------------------


@pytest.mark.parametrize("argv", [["--json", "backup"], ["backup", "--json"]])
def test_backup_json_before_or_after_command_prints_json_result(
        setup: Path, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """`--json backup` and `backup --json` both print the backup result as JSON on stdout."""
    assert main(["--config", str(setup), *argv]) == 0
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert result["files"] == 2
    assert re.fullmatch(r"\d{8}T\d{6}\.\d{6}Z-[0-9a-f]{8}", result["snapshot"])
    assert result["errors"] == 0
    assert "Traceback" not in err


def test_snapshots_json_after_backup_lists_it(setup: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """A snapshot taken by `backup` is listed by `snapshots --json`."""
    assert main(["--config", str(setup), "backup", "--json"]) == 0
    snapshot = json.loads(capsys.readouterr().out)["snapshot"]
    assert main(["--config", str(setup), "snapshots", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["id"] for row in rows] == [snapshot]


def test_check_read_data_subset_runs_on_a_real_repository(
        setup: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`check --read-data-subset 10%` runs against a repository with a snapshot, exit 0."""
    assert main(["--config", str(setup), "backup"]) == 0
    capsys.readouterr()
    assert main(["--config", str(setup), "check", "--read-data-subset", "10%", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["snapshots"] == 1


def test_backup_subprocess_console_script_json_output(setup: Path) -> None:
    """The console script takes a snapshot; stdout is only the JSON result, logs go to stderr."""
    proc = _run(["--config", str(setup), "backup", "--json"], console_script=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["files"] == 2
    for line in proc.stderr.strip().splitlines():
        json.loads(line)  # logs are JSON lines when stderr is not a terminal


# --- restore modes and confirmation -------------------------------------------------------------


def test_restore_without_mode_explains_three_modes_exit_2(
        setup: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`restore` without --target/--live/--tokens-only exits 2 and names the three modes."""
    assert main(["--config", str(setup), "restore"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    for mode in ("--target DIR", "--live", "--tokens-only"):
        assert mode in err
    assert all(line.startswith(ERROR_PREFIX) for line in err.strip().splitlines())


def test_restore_two_modes_is_usage_error(setup: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Exactly one mode: --live together with --target is refused."""
    assert main(["--config", str(setup), "restore", "--live", "--target", "/tmp/x"]) == 2
    assert "not allowed with" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["--live", "--tokens-only"])
def test_restore_live_modes_without_yes_piped_stdin_refuse_exit_2(
        setup: Path, mode: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Without --yes and without a terminal, --live/--tokens-only refuse (even 'yes' piped in)
    and change neither the volume nor the repository."""
    assert main(["--config", str(setup), "backup"]) == 0
    volume, repo = setup.parent / "volume", setup.parent / "repo"
    (volume / "users" / "u1.json").write_text('{"id": "u1"}', encoding="utf-8")
    before = (_tree(volume), _tree(repo))
    capsys.readouterr()
    monkeypatch.setattr(sys, "stdin", io.StringIO("yes\n"))
    assert main(["--config", str(setup), "restore", "latest", mode]) == 2
    err = capsys.readouterr().err
    assert "--yes" in err
    assert err.startswith(ERROR_PREFIX)
    assert (_tree(volume), _tree(repo)) == before
    assert sys.stdin.read() == "yes\n"  # the answer was never consumed


def test_restore_target_dry_run_counts_from_snapshot_writes_nothing(
        setup: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """restore --target --dry-run reports the snapshot's counts per source and creates
    nothing at the target."""
    assert main(["--config", str(setup), "backup"]) == 0
    capsys.readouterr()
    target = setup.parent / "out"
    code = main(["--config", str(setup), "restore", "latest", "--target", str(target),
                 "--dry-run", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["dry_run"] is True and not target.exists()
    assert result["sources"] == {"volume": {"files": 2, "dirs": 1, "symlinks": 0,
                                            "bytes": result["bytes"]}}
    assert result["files"] == 2 and result["bytes"] > 0


def test_restore_tokens_only_without_dsn_config_error_before_any_io(
        setup: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--tokens-only without kong_tokens.dsn is a configuration error (exit 2) naming the key,
    raised before the repository is even opened (here: it does not exist)."""
    config = yaml.safe_load(setup.read_text())
    config["repository"]["url"] = str(setup.parent / "no-repository-here")
    setup.write_text(yaml.safe_dump(config))
    code = main(["--config", str(setup), "restore", "latest", "--tokens-only", "--yes"])
    assert code == ExitCode.USAGE
    err = capsys.readouterr().err
    assert "kong_tokens.dsn" in err
    assert not (setup.parent / "no-repository-here").exists()


def test_restore_live_without_yes_subprocess_refuses_exit_2(setup: Path) -> None:
    """A real process without a terminal refuses `restore --live` and touches nothing."""
    volume = setup.parent / "volume"
    before = _tree(volume)
    proc = _run(["--config", str(setup), "restore", "--live"])
    assert proc.returncode == 2, proc.stderr
    assert "--yes" in proc.stderr
    assert _tree(volume) == before
    assert not (setup.parent / "repo").exists()


# --- the daemon from the console script -----------------------------------------------------


def test_daemon_with_a_bad_listen_address_is_one_line_exit_2(setup: Path) -> None:
    """`wicked-dr daemon` from the console script: a bad daemon.listen is refused at once,
    one line naming the key, before anything listens or runs."""
    env = {"WICKED_DR_DAEMON__LISTEN": "no-port-here"}
    proc = _run(["--config", str(setup), "daemon"], console_script=True, env=env)
    assert proc.returncode == ExitCode.USAGE
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "daemon.listen" in lines[0], proc.stderr


# --- errors with --json -------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["--json", "snapshots"], ["snapshots", "--json"]])
def test_json_error_prints_error_object_on_stdout(
        setup: Path, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """With --json a failure also prints {"error", "exit_code"} on stdout."""
    code = main(["--config", str(setup), *argv])
    out, err = capsys.readouterr()
    assert code == ExitCode.NOT_FOUND
    error = json.loads(out)
    assert error["exit_code"] == code and "repository" in error["error"]
    assert err.startswith(ERROR_PREFIX)


def test_json_config_error_prints_error_object_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A configuration error under --json is machine-readable with exit_code 2."""
    code = main(["--json", "--config", str(tmp_path / "absent.yaml"), "snapshots"])
    out, _ = capsys.readouterr()
    assert code == 2
    data = json.loads(out)
    assert set(data) == {"error", "exit_code"}
    assert data["exit_code"] == 2
    assert "absent.yaml" in data["error"]


def test_json_error_subprocess_stdout_is_only_the_error_object(tmp_path: Path) -> None:
    """In a real process --json keeps stdout machine-readable on failure too."""
    proc = _run(["--json", "--config", str(tmp_path / "absent.yaml"), "backup"])
    assert proc.returncode == 2
    assert json.loads(proc.stdout)["exit_code"] == 2
    assert proc.stderr.startswith(ERROR_PREFIX)
    assert len(proc.stderr.strip().splitlines()) == 1


def test_not_found_snapshot_exit_5(setup: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Exporting a snapshot that does not exist exits 5 with one error line."""
    assert main(["--config", str(setup), "backup"]) == 0
    capsys.readouterr()
    code = main(["--config", str(setup), "export", "20000101T000000Z-00000000",
                 "--tar", str(setup.parent / "out.tar")])
    err = capsys.readouterr().err
    assert code == ExitCode.NOT_FOUND
    assert len(err.strip().splitlines()) == 1
    assert err.startswith(ERROR_PREFIX)


# --- failures no layer translated ---------------------------------------------------------------

def test_state_dir_not_a_directory_is_one_line_exit_1(setup: Path) -> None:
    """An unusable state_dir fails with exit 1 and one error line, not a traceback."""
    blocker = setup.parent / "state-file"
    blocker.write_text("", encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "wicked_dr.cli", "--config", str(setup),
                           "backup"],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=120,
                          env={**_env(), "WICKED_DR_STATE_DIR": str(blocker)}, check=False)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith(ERROR_PREFIX)]
    assert len(errors) == 1, proc.stderr
    assert str(blocker) in errors[0]


def test_export_into_missing_directory_is_one_line_exit_1(setup: Path) -> None:
    """`export --tar` into a directory that does not exist fails with one line and exit 1."""
    assert _run(["--config", str(setup), "backup"]).returncode == 0
    proc = _run(["--config", str(setup), "export", "latest",
                 "--tar", str(setup.parent / "no" / "such" / "dir" / "x.tar")])
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert proc.stderr.startswith(ERROR_PREFIX)
