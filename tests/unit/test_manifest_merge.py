"""The delta merge: a manifest read without the lock, corrected by what was re-read under it.

Lines are real manifest lines (``entry_lines``) in the real manifest order (``sort_key``).
Covered: lines replaced, dropped and inserted at their place (start, middle and end of a
directory block, after the whole manifest), a listing dropping names, the counts (``Adjust``)
and flags, ``touches`` for a stretch, a manifest merged stretch by stretch, paths that need
JSON escapes, and random trees checked against a naive reference.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Sequence

import pytest

from wicked_dr.engine.manifest_merge import (
    Adjust,
    DeltaMerge,
    SortKey,
    TreeDelta,
    key_of,
    path_of,
)
from wicked_dr.repository.entry_lines import dir_line, file_line, symlink_line
from wicked_dr.repository.manifest import sort_key

SHA = "ab" * 32


def _file(path: str, size: int = 10, mtime_ns: int = 1) -> str:
    return file_line(path, 0o644, 1000, 1000, mtime_ns, size, SHA)


def _dir(path: str, mtime_ns: int = 1) -> str:
    return dir_line(path, 0o755, 1000, 1000, mtime_ns)


def _link(path: str, target: str = "elsewhere") -> str:
    return symlink_line(path, 0o777, 1000, 1000, 1, target)


def _ordered(lines: Sequence[str]) -> list[str]:
    return sorted(lines, key=key_of)


# root block: a.txt b c.txt lnk | block "b": sub x y | block "b/sub": q
MANIFEST = _ordered([
    _file("a.txt", 3), _dir("b"), _file("c.txt", 4), _link("lnk"),
    _dir("b/sub"), _file("b/x", 5), _file("b/y", 6),
    _file("b/sub/q", 7),
])


def _paths(lines: Sequence[str]) -> list[str]:
    return [path_of(line) for line in lines]


def _run(delta: TreeDelta, manifest: Sequence[str] = MANIFEST) -> tuple[list[str], DeltaMerge]:
    merge = DeltaMerge(delta)
    out = list(merge.merge(manifest))
    out += list(merge.rest())
    return out, merge


def test_manifest_fixture_is_in_manifest_order() -> None:
    """The fixture is what a scan writes: root block first, then blocks by components."""
    assert _paths(MANIFEST) == ["a.txt", "b", "c.txt", "lnk", "b/sub", "b/x", "b/y",
                                "b/sub/q"]


def test_replaced_line_takes_the_old_ones_place() -> None:
    """A changed file's new line replaces the old one in place; counts move by the size
    difference; nothing shifts."""
    new = _file("b/x", 50, mtime_ns=2)
    out, merge = _run(TreeDelta(lines={"b/x": new}))
    assert out == [new if path_of(line) == "b/x" else line for line in MANIFEST]
    assert merge.changed and not merge.shifted
    assert merge.adjust == Adjust(files=0, bytes_total=45)


def test_replacement_by_a_different_kind_moves_the_counts() -> None:
    """A file replaced by a symlink: one file fewer (and its bytes), one symlink more."""
    new = _link("c.txt", "a.txt")
    out, merge = _run(TreeDelta(lines={"c.txt": new}))
    assert out[2] == new and len(out) == len(MANIFEST)
    assert merge.adjust == Adjust(files=-1, symlinks=1, bytes_total=-4)
    assert merge.changed and not merge.shifted


def test_identical_replacement_changes_nothing() -> None:
    """A re-read that found the same line: output identical, ``changed`` and ``shifted``
    stay False, counts untouched."""
    out, merge = _run(TreeDelta(lines={"b/y": _file("b/y", 6)}))
    assert out == MANIFEST
    assert not merge.changed and not merge.shifted
    assert merge.adjust == Adjust()


@pytest.mark.parametrize(("path", "adjust"), [
    ("b/x", Adjust(files=-1, bytes_total=-5)),
    ("a.txt", Adjust(files=-1, bytes_total=-3)),
    ("b/sub/q", Adjust(files=-1, bytes_total=-7)),
    ("b/sub", Adjust(dirs=-1)),
    ("lnk", Adjust(symlinks=-1)),
])
def test_dropped_entry_is_left_out_and_counted(path: str, adjust: Adjust) -> None:
    """An entry re-read as gone (None) is not emitted; the counts lose it; later cuts move."""
    out, merge = _run(TreeDelta(lines={path: None}))
    assert out == [line for line in MANIFEST if path_of(line) != path]
    assert merge.adjust == adjust
    assert merge.changed and merge.shifted


@pytest.mark.parametrize(("path", "after"), [
    ("b/a", "lnk"),           # start of block "b", before "b/sub"
    ("b/xx", "b/x"),          # between two names
    ("b/zz", "b/y"),          # end of block "b", before block "b/sub"
    ("m", "lnk"),             # end of the root block, before block "b"
    ("0", None),              # before the first line of the manifest
])
def test_new_entry_is_inserted_at_its_place(path: str, after: str | None) -> None:
    """A new file comes out right after the line it sorts after, during ``merge`` (it sorts
    before the manifest's last line, so ``rest`` has nothing left)."""
    new = _file(path, 9)
    merge = DeltaMerge(TreeDelta(lines={path: new}))
    out = list(merge.merge(MANIFEST))
    assert list(merge.rest()) == []
    expected = list(MANIFEST)
    expected.insert(0 if after is None else _paths(MANIFEST).index(after) + 1, new)
    assert out == expected
    assert out == _ordered(out)
    assert merge.adjust == Adjust(files=1, bytes_total=9)
    assert merge.changed and merge.shifted


@pytest.mark.parametrize("path", ["b/sub/r", "c/new", "zz"])
def test_entry_after_the_whole_manifest_comes_from_rest(path: str) -> None:
    """An entry sorting after the manifest's last line is not emitted by ``merge`` (the
    stretch's end is not known to be the end) but by ``rest``."""
    new = _file(path, 2)
    merge = DeltaMerge(TreeDelta(lines={path: new}))
    out = list(merge.merge(MANIFEST))
    if sort_key(path) > key_of(MANIFEST[-1]):
        assert out == MANIFEST
        assert list(merge.rest()) == [new]
    else:  # "zz" is in the root block, before block "b"
        assert new in out and list(merge.rest()) == []
    assert merge.adjust == Adjust(files=1, bytes_total=2)


def test_gone_path_never_in_the_manifest_emits_nothing() -> None:
    """A path created and deleted while the scan ran (None, never listed): nothing emitted,
    wherever it sorts, and nothing shifts."""
    delta = TreeDelta(lines={"0": None, "b/xx": None, "b/sub/zz": None})
    out, merge = _run(delta)
    assert out == MANIFEST
    assert not merge.changed and not merge.shifted
    assert merge.adjust == Adjust()


def test_listing_drops_names_not_in_the_new_set_and_keeps_the_others() -> None:
    """A directory whose names changed: entries of its block not in the new set are
    dropped, the others kept; other blocks, including its subdirectory's, are untouched."""
    out, merge = _run(TreeDelta(listings={"b": {"sub", "y"}}))
    assert _paths(out) == ["a.txt", "b", "c.txt", "lnk", "b/sub", "b/y", "b/sub/q"]
    assert merge.adjust == Adjust(files=-1, bytes_total=-5)
    assert merge.changed and merge.shifted


def test_root_listing_uses_the_empty_directory_name() -> None:
    """The root's listing is keyed by ""."""
    out, _ = _run(TreeDelta(listings={"": {"a.txt", "b"}}))
    assert _paths(out) == ["a.txt", "b", "b/sub", "b/x", "b/y", "b/sub/q"]


def test_listing_with_every_name_changes_nothing() -> None:
    """A listing that still has every name drops nothing."""
    out, merge = _run(TreeDelta(listings={"b": {"sub", "x", "y", "new"}}))
    assert out == MANIFEST
    assert not merge.changed and not merge.shifted


def test_listing_and_lines_together() -> None:
    """A renamed file: the old name gone from the listing, the new name's line inserted."""
    new = _file("b/w", 5)
    out, merge = _run(TreeDelta(lines={"b/w": new}, listings={"b": {"sub", "w", "y"}}))
    assert _paths(out) == ["a.txt", "b", "c.txt", "lnk", "b/sub", "b/w", "b/y", "b/sub/q"]
    assert merge.adjust == Adjust()
    assert merge.changed and merge.shifted


def _k(path: str) -> SortKey:
    return sort_key(path)


@pytest.mark.parametrize(("after", "upto", "expected"), [
    (None, "a.txt", False),      # before the pending path
    (None, "b/x", False),
    ("b/x", "b/xx", True),       # the pending path is the stretch's end
    ("b/x", "b/y", True),        # the pending path sorts inside the stretch
    (None, "b/sub/q", True),
])
def test_touches_a_pending_path(after: str | None, upto: str, expected: bool) -> None:
    """A stretch (after, upto] is touched when a changed path sorts in it."""
    merge = DeltaMerge(TreeDelta(lines={"b/xx": _file("b/xx")}))
    assert merge.touches(None if after is None else _k(after), _k(upto)) is expected


def test_touches_nothing_once_the_pending_path_is_merged() -> None:
    """A path merged is no longer pending: later stretches are untouched."""
    merge = DeltaMerge(TreeDelta(lines={"b/x": _file("b/x", 1)}))
    list(merge.merge(MANIFEST[:6]))
    assert not merge.touches(_k("b/x"), _k("b/sub/q"))


@pytest.mark.parametrize(("after", "upto", "expected"), [
    (None, "lnk", False),        # the root block only: ends before block "b"
    (None, "b/sub", True),       # reaches block "b"
    ("lnk", "b/sub", True),
    ("b/x", "b/y", True),        # inside block "b"
    ("b/y", "b/sub/q", True),    # block "b" may hold names after "y"
    ("b/sub/q", "b/sub/z", False),  # block "b/sub" only: after block "b"
])
def test_touches_a_listing_block(after: str | None, upto: str, expected: bool) -> None:
    """A stretch is touched when it overlaps the block of a directory whose names changed."""
    merge = DeltaMerge(TreeDelta(listings={"b": {"x"}}))
    assert merge.touches(None if after is None else _k(after), _k(upto)) is expected


def test_touches_a_subdirectory_listing_only_in_its_own_block() -> None:
    """Block "b/sub" sorts after block "b": a stretch ending in block "b" misses it."""
    merge = DeltaMerge(TreeDelta(listings={"b/sub": set()}))
    assert not merge.touches(None, _k("b/y"))
    assert merge.touches(_k("b/y"), _k("b/sub/q"))


def test_touches_a_listing_block_past_the_last_name_sentinel() -> None:
    """Names beginning with U+10FFFF are valid UTF-8 file names (no sentinel name ends a
    block). A stretch (``b/\U0010ffff``, ``b/\U0010ffffa``] is in block "b", whose names changed;
    ``merge`` drops ``b/\U0010ffffa`` there, so ``touches`` must say True."""
    last, beyond = "b/\U0010ffff", "b/\U0010ffffa"
    merge = DeltaMerge(TreeDelta(listings={"b": {"\U0010ffff"}}))
    assert list(merge.merge([_file(beyond)])) == []  # merge does correct this stretch
    assert DeltaMerge(TreeDelta(listings={"b": {"\U0010ffff"}})).touches(_k(last), _k(beyond))


def _merge_in_stretches(delta: TreeDelta, manifest: Sequence[str],
                        cuts: Sequence[int]) -> tuple[list[str], DeltaMerge]:
    merge = DeltaMerge(delta)
    out: list[str] = []
    bounds = [0, *cuts, len(manifest)]
    for start, end in itertools.pairwise(bounds):
        out += merge.merge(manifest[start:end])
    out += merge.rest()
    return out, merge


def _big_delta() -> TreeDelta:
    return TreeDelta(
        lines={"0": _file("0", 1), "b/x": None, "b/xx": _file("b/xx", 2), "b/zz": _dir("b/zz"),
               "c.txt": _file("c.txt", 40), "b/sub/r": _file("b/sub/r", 3), "gone": None},
        listings={"": {"0", "a.txt", "b", "c.txt"}})


@pytest.mark.parametrize("cuts", [[], [1], [3], [4, 5], [1, 2, 3, 4, 5, 6, 7], [0, 8],
                                  [5, 5, 5]])
def test_merging_stretch_by_stretch_is_merging_at_once(cuts: list[int]) -> None:
    """Cut anywhere (even into empty stretches), the merge gives the same lines, counts
    and flags as one call over the whole manifest."""
    whole, whole_merge = _run(_big_delta())
    assert _paths(whole) == ["0", "a.txt", "b", "c.txt", "b/sub", "b/xx", "b/y", "b/zz",
                             "b/sub/q", "b/sub/r"]
    out, merge = _merge_in_stretches(_big_delta(), MANIFEST, cuts)
    assert out == whole
    assert merge.adjust == whole_merge.adjust
    assert (merge.changed, merge.shifted) == (whole_merge.changed, whole_merge.shifted)


@pytest.mark.parametrize("name", ['quo"te', "tab\there", "back\\slash", "new\nline",
                                  "caf\u00e9", "emoji\U0001f600", "\x01ctl", "sp ace"])
def test_paths_needing_json_escapes(name: str) -> None:
    """Names that JSON escapes are read back exactly (``path_of``), replaced, dropped and
    inserted like any other."""
    line = _file(f"b/{name}", 8)
    assert path_of(line) == f"b/{name}" == json.loads(line)["path"]
    assert path_of(_dir(name)) == name and path_of(_link(f'{name}/"x"')) == f'{name}/"x"'
    manifest = _ordered([*MANIFEST, line])
    new = _file(f"b/{name}", 80)
    out, merge = _run(TreeDelta(lines={f"b/{name}": new}), manifest)
    assert out == [new if item == line else item for item in manifest]
    assert merge.adjust == Adjust(bytes_total=72)
    out, merge = _run(TreeDelta(lines={f"b/{name}": None}), manifest)
    assert out == MANIFEST
    out, merge = _run(TreeDelta(lines={f"b/{name}": line}))
    assert out == manifest
    out, merge = _run(TreeDelta(listings={"b": {"sub", "x", "y"}}), manifest)
    assert out == MANIFEST


# --- random trees against a naive reference ----------------------------------------------

_NAME_CHARS = ["a", "b", "z", "A", "0", "-", ".", "_", " ", '"', "\t", "\\", "\u00e9",
               "\U0001f600"]


def _name(rng: random.Random) -> str:
    return "".join(rng.choice(_NAME_CHARS) for _ in range(rng.randint(1, 3)))


def _random_line(rng: random.Random, path: str, kind: str) -> str:
    if kind == "dir":
        return _dir(path, rng.randint(1, 3))
    if kind == "symlink":
        return _link(path, _name(rng))
    return _file(path, rng.randint(0, 100), rng.randint(1, 3))


def _random_tree(rng: random.Random) -> dict[str, str]:
    """path -> line, with each directory's entries under it."""
    tree: dict[str, str] = {}
    dirs = [""]
    for _ in range(rng.randint(0, 25)):
        parent = rng.choice(dirs)
        path = f"{parent}/{_name(rng)}" if parent else _name(rng)
        if path in tree:
            continue
        kind = rng.choice(["file", "file", "file", "dir", "symlink"])
        tree[path] = _random_line(rng, path, kind)
        if kind == "dir":
            dirs.append(path)
    return tree


def _parent(path: str) -> str:
    return path.rpartition("/")[0]


def _random_delta(rng: random.Random, tree: dict[str, str]) -> TreeDelta:
    delta = TreeDelta()
    dirs = [""] + [p for p, line in tree.items() if json.loads(line)["type"] == "dir"]
    for path, line in tree.items():
        roll = rng.random()
        if roll < 0.15:
            delta.lines[path] = None
        elif roll < 0.3:
            kind = json.loads(line)["type"]
            delta.lines[path] = _random_line(rng, path, kind)  # may equal the old line
        elif roll < 0.35:
            delta.lines[path] = line
    for _ in range(rng.randint(0, 6)):
        parent = rng.choice(dirs)
        path = f"{parent}/{_name(rng)}" if parent else _name(rng)
        if path in tree or path in delta.lines:
            continue
        # A new entry, or one created and deleted again while the scan ran.
        delta.lines[path] = None if rng.random() < 0.2 else _random_line(rng, path, "file")
    for rel_dir in dirs:
        if rng.random() < 0.3:
            names = {p.rpartition("/")[2] for p in tree if _parent(p) == rel_dir}
            kept = {n for n in names if rng.random() < 0.7}
            new = {p.rpartition("/")[2] for p, line in delta.lines.items()
                   if _parent(p) == rel_dir and line is not None}
            delta.listings[rel_dir] = kept | new
    return delta


def _reference(tree: dict[str, str], delta: TreeDelta) -> list[str]:
    """The corrected manifest, naively: apply the delta to a dict and sort."""
    result = dict(tree)
    for path, line in delta.lines.items():
        if line is None:
            result.pop(path, None)
        else:
            result[path] = line
    for rel_dir, names in delta.listings.items():
        for path in list(result):
            if (_parent(path) == rel_dir and path.rpartition("/")[2] not in names
                    and path not in delta.lines):
                del result[path]
    return [result[path] for path in sorted(result, key=sort_key)]


def _counts(lines: Sequence[str]) -> Adjust:
    adjust = Adjust()
    for line in lines:
        adjust.add(line)
    return adjust


@pytest.mark.parametrize("seed", range(300))
def test_random_trees_match_the_naive_reference(seed: int) -> None:
    """For a random tree and delta, merged in random stretches: the lines are the naive
    reference's, the counts move by the difference, the flags tell what happened, and a
    stretch ``touches`` calls untouched comes out exactly as it went in."""
    rng = random.Random(seed)
    tree = _random_tree(rng)
    manifest = [tree[path] for path in sorted(tree, key=sort_key)]
    delta = _random_delta(rng, tree)
    expected = _reference(tree, delta)

    merge = DeltaMerge(delta)
    out: list[str] = []
    cuts = sorted(rng.randint(0, len(manifest)) for _ in range(rng.randint(0, 4)))
    bounds = [0, *cuts, len(manifest)]
    after: SortKey | None = None
    for start, end in itertools.pairwise(bounds):
        stretch = manifest[start:end]
        if not stretch:
            continue
        touched = merge.touches(after, key_of(stretch[-1]))
        merged = list(merge.merge(stretch))
        if not touched:
            assert merged == stretch
        out += merged
        after = key_of(stretch[-1])
    out += merge.rest()

    assert out == expected
    before, now = _counts(manifest), _counts(expected)
    assert merge.adjust == Adjust(now.files - before.files, now.dirs - before.dirs,
                                  now.symlinks - before.symlinks,
                                  now.bytes_total - before.bytes_total)
    assert merge.changed == (out != manifest)
    assert merge.shifted == (set(_paths(out)) != set(_paths(manifest)))
