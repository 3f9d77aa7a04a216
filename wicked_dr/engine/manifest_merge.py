"""A manifest read without wicked's lock, corrected by what was re-read under it.

The backup scans the volume first, unlocked (``tree_recheck.py``): its manifest lines go to
tree objects as usual. Under the lock, only what may have changed is re-read, giving a
``TreeDelta``: new lines by path (``None``: the entry is gone) and, for directories whose
set of names changed, the names they hold now. This module walks the first manifest in
order and yields the corrected one: lines replaced, dropped, or inserted at their place in
the manifest order (``manifest.sort_key``).

Only lines near a change are parsed: ``touches`` tells the caller whether a stretch of the
manifest (a tree object, known by its last line) has anything to correct, so an untouched
tree object is kept as it is.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from wicked_dr.repository.manifest import dir_key, sort_key

SortKey = tuple[tuple[str, ...], str]
_scanstring = json.decoder.scanstring  # type: ignore[attr-defined]


@dataclass
class TreeDelta:
    """What the locked phase found changed since the unlocked scan read the volume."""

    lines: dict[str, str | None] = field(default_factory=dict)
    # Directories whose set of names changed, with the names they hold now.
    listings: dict[str, set[str]] = field(default_factory=dict)
    reread: int = 0  # files re-read under the lock

    def __bool__(self) -> bool:
        return bool(self.lines or self.listings)


@dataclass
class Adjust:
    """How the corrections change the snapshot's counts."""

    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes_total: int = 0

    def remove(self, line: str) -> None:
        self._count(line, -1)

    def add(self, line: str) -> None:
        self._count(line, 1)

    def _count(self, line: str, sign: int) -> None:
        entry: dict[str, Any] = json.loads(line)
        kind = entry["type"]
        if kind == "file":
            self.files += sign
            self.bytes_total += sign * int(entry["size"])
        elif kind == "dir":
            self.dirs += sign
        else:
            self.symlinks += sign


def path_of(line: str) -> str:
    """The path of a manifest line (``{"path":"...",...``)."""
    path: str = _scanstring(line, 9)[0]
    return path


def key_of(line: str) -> SortKey:
    return sort_key(path_of(line))


class DeltaMerge:
    """Applies one ``TreeDelta`` to a manifest streamed in order, stretch by stretch."""

    def __init__(self, delta: TreeDelta) -> None:
        self._lines = delta.lines
        self._listings = delta.listings
        self._pending = sorted(((sort_key(path), path) for path in delta.lines), reverse=True)
        self._blocks = sorted((dir_key(d), d) for d in delta.listings)
        self.adjust = Adjust()
        self.shifted = False  # an entry was added or dropped: later tree cuts move
        self.changed = False  # some line differs from the first manifest's

    def touches(self, after: SortKey | None, upto: SortKey) -> bool:
        """Whether the stretch of the manifest with keys in (``after``, ``upto``] has a
        correction: a changed path there, or a directory block whose names changed."""
        if self._pending and self._pending[-1][0] <= upto:
            return True
        for block, _ in self._blocks:
            # The block's keys are (block, any name): some may lie in the stretch unless the
            # block ends before it starts (a name can sort after any sentinel name).
            if (block, "") <= upto and (after is None or after[0] <= block):
                return True
        return False

    def merge(self, lines: Sequence[str]) -> list[str]:
        """The corrected lines of a stretch of the first manifest (in order), with the new
        entries that sort before its end inserted.

        Only a few lines are parsed: each change's place is found by bisection (the lines
        are in manifest order), and the lines between changes are copied as they are. A
        directory whose names changed needs every line of its block looked at."""
        if self._listings:
            return list(self._merge_each(lines))
        out: list[str] = []
        start, end = 0, len(lines)
        while start < end and self._pending:
            key, path = self._pending[-1]
            at = bisect.bisect_left(lines, key, start, end, key=key_of)
            out.extend(lines[start:at])
            start = at
            if at == end:
                break  # it sorts after this stretch: a later stretch, or rest(), has it
            self._pending.pop()
            if path_of(lines[at]) == path:
                out.extend(self._replaced(lines[at], self._lines[path]))
                start = at + 1
            else:
                out.extend(self._new(path))
        out.extend(lines[start:])
        return out

    def _merge_each(self, lines: Iterable[str]) -> Iterator[str]:
        for line in lines:
            path = path_of(line)
            key = sort_key(path)
            yield from self._inserted_before(key)
            if self._pending and self._pending[-1][1] == path:
                self._pending.pop()
                yield from self._replaced(line, self._lines[path])
            elif not self._listed(key):
                self.adjust.remove(line)
                self.shifted = self.changed = True
            else:
                yield line

    def rest(self) -> list[str]:
        """The new entries that sort after the whole first manifest."""
        out: list[str] = []
        while self._pending:
            _, path = self._pending.pop()
            out.extend(self._new(path))
        return out

    def _inserted_before(self, key: SortKey) -> Iterator[str]:
        while self._pending and self._pending[-1][0] < key:
            _, path = self._pending.pop()
            yield from self._new(path)

    def _new(self, path: str) -> Iterator[str]:
        line = self._lines[path]
        if line is not None:  # gone, and never in the first manifest: nothing to do
            self.adjust.add(line)
            self.shifted = self.changed = True
            yield line

    def _replaced(self, old: str, new: str | None) -> Iterator[str]:
        if new == old:
            yield old
            return
        self.changed = True
        self.adjust.remove(old)
        if new is None:
            self.shifted = True
            return
        self.adjust.add(new)
        yield new

    def _listed(self, key: SortKey) -> bool:
        """False when the entry's directory lost it (its names changed and it is not one)."""
        if not self._listings:
            return True
        names = self._listings.get("/".join(key[0]))
        return names is None or key[1] in names
