"""The journal of a live restore: what it did so far, kept where it survives a crash.

A live restore changes live state in steps (containers stopped, the volume swapped,
portal-api started...). The journal is one JSON file, ``journal.json`` in the volume's
restore workspace (``sources/volume_live.py``: a reserved ``.wicked-dr-`` name on the
volume's own file system, so it survives the process and the sidecar), rewritten atomically
(temporary file, fsync, rename, fsync of the folder) *before* each step starts. While it
exists, every other command refuses (exit 6) and names it; ``wicked-dr restore --resume``
reads it and finishes or rolls back, as the step it records makes safe.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wicked_dr.errors import RefusedError
from wicked_dr.holder import current_holder
from wicked_dr.sources.volume_live import workspace_candidates

JOURNAL_NAME = "journal.json"
STATE_WORKSPACE = "live-restore"  # in state_dir (state_dir.py ``live_workspace``)
FORMAT = 1

# The steps in order; a restore stopped before HEALTHY is rolled back by --resume, one
# stopped at or after it is finished (the restored data is live and portal-api ran on it).
STEPS = ("staging", "stopping", "swapping", "starting", "healthy", "rebuilding", "tokens",
         "listeners", "done")
HEALTHY = "healthy"


@dataclass
class Journal:
    """The journal file and its content (``doc``); ``advance`` persists a step."""

    path: Path
    doc: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, workspace: Path, **fields: Any) -> Journal:
        workspace.mkdir(mode=0o700, exist_ok=True)
        os.chmod(workspace, 0o700)  # staging and pre-restore copies: their owner only
        journal = cls(workspace / JOURNAL_NAME,
                      {"format": FORMAT, "holder": current_holder().to_json(),
                       "created": time.time(), "step": "staging", **fields})
        journal.save()
        return journal

    @classmethod
    def load(cls, path: Path) -> Journal:
        try:
            doc = json.loads(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise RefusedError(f"the live restore journal {path} cannot be read ({exc}); "
                               "move it aside by hand after checking the volume") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise RefusedError(f"the live restore journal {path} is of an unknown format")
        return cls(path, doc)

    @property
    def step(self) -> str:
        return str(self.doc.get("step", "staging"))

    def past(self, step: str) -> bool:
        """Whether the restore reached ``step`` (or a later one)."""
        return STEPS.index(self.step) >= STEPS.index(step)

    def advance(self, step: str, **fields: Any) -> None:
        """Record that ``step`` starts now (with ``fields``), before it changes anything."""
        self.doc["step"] = step
        self.doc.update(fields)
        self.save()

    def save(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        data = json.dumps(self.doc, indent=1, sort_keys=True).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        _fsync_dir(self.path.parent)

    def describe(self) -> str:
        return (f"restore {self.doc.get('restore_id')} of snapshot {self.doc.get('snapshot')} "
                f"stopped at step '{self.step}'")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def find_journal(volume: Path | None, state_root: Path) -> Path | None:
    """The journal of an unfinished live restore, if there is one: on the volume's file
    system (both places its workspace can be), or in ``state_dir`` when a restore of
    wicked's database alone had no volume to keep it on."""
    candidates = [*workspace_candidates(volume)] if volume is not None else []
    candidates.append(state_root / STATE_WORKSPACE)
    for workspace in candidates:
        path = workspace / JOURNAL_NAME
        if path.is_file():
            return path
    return None


def refuse_while_restoring(volume: Path | None, state_root: Path) -> None:
    """RefusedError naming the journal while a live restore is unfinished."""
    path = find_journal(volume, state_root)
    if path is None:
        return
    try:
        what = Journal.load(path).describe()
    except RefusedError:
        what = "an unreadable journal"
    raise RefusedError(f"a live restore is unfinished ({what}; journal {path}): run "
                       "'wicked-dr restore --resume' to finish or roll it back first")
