"""The progress reporter type: one definition, importable from every layer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from wicked_dr import progress
from wicked_dr.actions import common
from wicked_dr.engine import check, restore, snapshot_writer

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_progress_type_is_defined_once() -> None:
    """Every layer that takes a reporter uses the type from wicked_dr.progress."""
    for module in (common, check, restore, snapshot_writer):
        assert module.Progress is progress.Progress, module.__name__


def test_progress_module_imports_neither_rich_nor_other_layers() -> None:
    """Importing wicked_dr.progress loads no rich and no other wicked_dr module, so the
    engine can import it without pulling in actions, config or backends."""
    probe = ("import sys, wicked_dr.progress; "
             "print(sorted(m for m in sys.modules if m == 'rich' or m.startswith('rich.') "
             "or (m.startswith('wicked_dr.') and m != 'wicked_dr.progress')))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=60, check=True)
    assert proc.stdout.strip() == "[]"


def test_progress_reporter_off_the_terminal_is_none() -> None:
    """Without a terminal (as under pytest) no bar is drawn: the reporter is None."""
    with progress.progress_reporter("backup", enabled=True) as report:
        assert report is None
