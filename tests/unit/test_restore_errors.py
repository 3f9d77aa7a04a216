"""What `restore --target` says when it cannot do its job: a full disk names the target and
the space needed; no selector while verification is not built says so and names `latest`."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.services import require_root
from wicked_dr.cli import main
from wicked_dr.errors import ExitCode

ERROR_PREFIX = "wicked-dr: error: "
MIB = 1024 * 1024


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: a real file system that fills up."""
    require_root("mounting a tmpfs")
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
                   check=True, timeout=30)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True, timeout=30)


def _error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith(ERROR_PREFIX)]
    assert len(lines) == 1, err
    return lines[0]


def test_restore_tree_disk_full_names_target_and_space_needed_exit_1(
        setup: Path, small_disk: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A restore that fills its disk fails with exit 1 and one line naming the file it was
    writing, the snapshot's size and the target's free space, not a bare "I/O error"; the
    file it could not finish is not left under its real name."""
    (setup.parent / "volume" / "big.bin").write_bytes(os.urandom(3 * MIB))
    assert main(["--config", str(setup), "backup"]) == 0
    capsys.readouterr()
    target = small_disk / "t"
    code = main(["--config", str(setup), "restore", "latest", "--target", str(target)])
    line = _error_line(capsys.readouterr().err)
    assert code == ExitCode.FAILED, line
    assert "I/O error" not in line
    match = re.fullmatch(rf"{ERROR_PREFIX}restore: no space left on device writing (\S+); the "
                         r"snapshot needs (3\.0 MiB), (\S+) had ([\d.]+ (?:B|KiB|MiB)) free",
                         line)
    assert match, line
    assert match.group(1).startswith(f"{target}/") and match.group(3) == str(target)
    assert not (target / "big.bin").exists()


def test_restore_no_selector_nothing_verified_names_verify_and_latest_exit_5(
        setup: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`restore --target DIR` without a snapshot (default latest-verified) and no verified
    snapshot: says so, names `verify` and `latest`; exit 5 and nothing written."""
    assert main(["--config", str(setup), "backup"]) == 0
    capsys.readouterr()
    target = setup.parent / "out"
    code = main(["--config", str(setup), "restore", "--target", str(target)])
    line = _error_line(capsys.readouterr().err)
    assert code == ExitCode.NOT_FOUND, line
    assert "none of the matching snapshots has been verified" in line
    assert "run 'wicked-dr verify'" in line and "'wicked-dr restore latest" in line
    assert not target.exists() or not any(target.iterdir())
