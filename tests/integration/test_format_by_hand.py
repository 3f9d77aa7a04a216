"""docs/format.md stays true: the independent by-hand restorer reads what the engine wrote."""

from __future__ import annotations

import filecmp
import json
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from wicked_dr.cli import main
from wicked_dr.testing.sample_volume import generate

ROOT = Path(__file__).resolve().parents[2]


def _write_config(tmp_path: Path, key: bool) -> Path:
    lines = [f"state_dir: {tmp_path / 'state'}", "repository:", f"  url: {tmp_path / 'repo'}"]
    if key:
        (tmp_path / "key").write_text(secrets.token_hex(32))
        lines.append(f"  encryption_key_file: {tmp_path / 'key'}")
    lines += ["volume:", f"  path: {tmp_path / 'vol'}"]
    config = tmp_path / "config.yaml"
    config.write_text("\n".join(lines) + "\n")
    return config


def _same_tree(a: Path, b: Path) -> bool:
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.diff_files or cmp.funny_files:
        return False
    if filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)[1]:
        return False
    return all(_same_tree(a / d, b / d) for d in cmp.common_dirs)


@pytest.mark.integration
@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_restore_by_hand_after_incremental_matches_volume(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], encrypted: bool) -> None:
    """A snapshot restored with only docs/restore_by_hand.py equals the volume, byte for byte."""
    config = _write_config(tmp_path, encrypted)
    generate(tmp_path / "vol", users=150, seed=7)
    assert main(["--config", str(config), "-q", "backup"]) == 0
    big = tmp_path / "vol" / "users" / "big.bin"
    big.write_bytes(secrets.token_bytes(9 * 1024 * 1024))  # three blobs: exercises "blobs"
    capsys.readouterr()
    assert main(["--config", str(config), "-q", "backup", "--json"]) == 0
    snapshot = json.loads(capsys.readouterr().out)["snapshot"]
    command = [sys.executable, str(ROOT / "docs" / "restore_by_hand.py"), str(tmp_path / "repo"),
               snapshot, str(tmp_path / "out")]
    if encrypted:
        command.append(str(tmp_path / "key"))
    subprocess.run(command, check=True, timeout=120)
    assert _same_tree(tmp_path / "vol", tmp_path / "out")
