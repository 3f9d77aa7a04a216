"""The change watch: real inotify on a local directory (``tmp_path``).

Covered: writes, chmods, creations, deletions and a replace-by-rename seen under the right
relative directory; an empty drain after one; the kernel's queue overflowing; a watched
directory removed; a directory that cannot be watched; and which file systems get a watch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from wicked_dr.engine.change_watch import (
    LOCAL_FILE_SYSTEMS,
    Changes,
    ChangeWatch,
    file_system_type,
    open_watch,
)


@pytest.fixture()
def volume(tmp_path: Path) -> Path:
    """A small volume: root files and a subdirectory with files, made before any watch."""
    (tmp_path / "a.json").write_text("{}", encoding="utf-8")
    (tmp_path / "x.json").write_text("{}", encoding="utf-8")
    sub = tmp_path / "users"
    sub.mkdir()
    (sub / "u1.json").write_text("{}", encoding="utf-8")
    (sub / "u2.json").write_text("{}", encoding="utf-8")
    return tmp_path


@pytest.fixture()
def watch(volume: Path) -> Iterator[ChangeWatch]:
    """A watch on the volume's root ("") and its subdirectory ("users"), closed after."""
    opened, reason = open_watch(volume)
    assert opened is not None, reason
    assert reason == ""
    opened.add(str(volume), "")
    opened.add(str(volume / "users"), "users")
    assert opened.complete
    yield opened
    opened.close()


def _assert_complete(changes: Changes) -> None:
    assert changes.complete, changes.reason
    assert changes.reason == ""


def test_nothing_changed_drains_empty_and_complete(watch: ChangeWatch) -> None:
    """Without a change, a drain is empty (falsy) and the watch still vouches."""
    changes = watch.drain()
    _assert_complete(changes)
    assert changes.touched == {} and not changes and changes.count() == 0


def test_write_is_seen_in_its_directory(watch: ChangeWatch, volume: Path) -> None:
    """A write to an existing file (IN_MODIFY), in the root and in a subdirectory."""
    with open(volume / "a.json", "a", encoding="utf-8") as out:
        out.write(" ")
    with open(volume / "users" / "u1.json", "a", encoding="utf-8") as out:
        out.write(" ")
    changes = watch.drain()
    _assert_complete(changes)
    assert changes.touched == {"": {"a.json"}, "users": {"u1.json"}}
    assert changes.count() == 2


def test_chmod_is_seen(watch: ChangeWatch, volume: Path) -> None:
    """A chmod (IN_ATTRIB) names the file."""
    os.chmod(volume / "users" / "u2.json", 0o600)
    changes = watch.drain()
    _assert_complete(changes)
    assert changes.touched == {"users": {"u2.json"}}


def test_create_and_delete_are_seen(watch: ChangeWatch, volume: Path) -> None:
    """A file created, a directory created and a file deleted each name their entry."""
    (volume / "users" / "u3.json").write_text("{}", encoding="utf-8")
    (volume / "new-dir").mkdir()
    (volume / "a.json").unlink()
    changes = watch.drain()
    _assert_complete(changes)
    assert changes.touched == {"": {"new-dir", "a.json"}, "users": {"u3.json"}}


def test_replace_by_rename_is_seen(watch: ChangeWatch, volume: Path) -> None:
    """The atomic-write pattern (write ``x.tmp``, rename over ``x.json``) names both."""
    (volume / "x.tmp").write_text('{"v": 2}', encoding="utf-8")
    os.rename(volume / "x.tmp", volume / "x.json")
    (volume / "users" / "u1.tmp").write_text('{"v": 2}', encoding="utf-8")
    os.rename(volume / "users" / "u1.tmp", volume / "users" / "u1.json")
    changes = watch.drain()
    _assert_complete(changes)
    assert changes.touched == {"": {"x.tmp", "x.json"}, "users": {"u1.tmp", "u1.json"}}


def test_a_second_drain_sees_only_what_came_after_the_first(
        watch: ChangeWatch, volume: Path) -> None:
    """Events are consumed by a drain: the next one without changes is empty and complete;
    a later change is seen alone."""
    os.chmod(volume / "a.json", 0o600)
    assert watch.drain().touched == {"": {"a.json"}}
    again = watch.drain()
    _assert_complete(again)
    assert again.touched == {}
    os.chmod(volume / "users" / "u1.json", 0o600)
    assert watch.drain().touched == {"users": {"u1.json"}}


def test_unwatched_directory_is_not_reported(watch: ChangeWatch, volume: Path) -> None:
    """A directory the scan did not add (created later) reports nothing of its own: only
    its creation, in its parent."""
    (volume / "late").mkdir()
    assert watch.drain().touched == {"": {"late"}}
    (volume / "late" / "f").write_text("x", encoding="utf-8")
    changes = watch.drain()
    _assert_complete(changes)
    assert changes.touched == {}


def test_queue_overflow_makes_the_watch_incomplete(watch: ChangeWatch, volume: Path) -> None:
    """More events than the kernel queues (``max_queued_events``), not drained: the drain
    says the watch is incomplete because of the overflow, and every later drain too."""
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text().strip())
    # Never a skip: a queue up to millions of events is generated in seconds (16 384 here).
    assert limit <= 4_000_000, f"fs.inotify.max_queued_events is {limit}: lower it to test"
    first, second = volume / "a.json", volume / "users" / "u1.json"
    for i in range(limit + 100):
        # Alternating files: the kernel coalesces only an event identical to the last one.
        os.utime(first if i % 2 else second, ns=(i, i))
    changes = watch.drain()
    assert changes.complete is False
    assert "overflow" in changes.reason
    assert watch.complete is False and "overflow" in watch.incomplete
    os.chmod(first, 0o600)
    later = watch.drain()
    assert later.complete is False and "overflow" in later.reason
    assert later.touched == {}


def test_removed_subdirectory_makes_the_watch_incomplete(
        watch: ChangeWatch, volume: Path) -> None:
    """A watched directory removed: its events can no longer be seen."""
    for child in (volume / "users").iterdir():
        child.unlink()
    (volume / "users").rmdir()
    changes = watch.drain()
    assert changes.complete is False
    assert "removed or moved" in changes.reason
    assert watch.drain().complete is False


def test_moved_subdirectory_makes_the_watch_incomplete(
        watch: ChangeWatch, volume: Path) -> None:
    """A watched directory renamed (IN_MOVE_SELF): its relative path no longer holds."""
    os.rename(volume / "users", volume / "users-old")
    changes = watch.drain()
    assert changes.complete is False
    assert "removed or moved" in changes.reason


def test_missing_directory_makes_the_watch_incomplete(volume: Path) -> None:
    """``add`` on a directory that does not exist: incomplete, the reason names it; later
    adds are ignored and every drain is incomplete."""
    watch, _ = open_watch(volume)
    assert watch is not None
    try:
        watch.add(str(volume), "")
        watch.add(str(volume / "gone"), "gone")
        assert watch.complete is False
        assert "gone" in watch.incomplete
        watch.add(str(volume / "users"), "users")
        os.chmod(volume / "users" / "u1.json", 0o600)
        changes = watch.drain()
        assert changes.complete is False and "gone" in changes.reason
        assert changes.touched == {}
    finally:
        watch.close()


def test_file_is_not_a_directory_to_watch(volume: Path) -> None:
    """``add`` on a file (ONLYDIR): incomplete, the reason names it."""
    watch, _ = open_watch(volume)
    assert watch is not None
    try:
        watch.add(str(volume / "a.json"), "a.json")
        assert watch.complete is False and "a.json" in watch.incomplete
    finally:
        watch.close()


def test_tmp_path_is_on_a_local_file_system(tmp_path: Path) -> None:
    """The test directory's file system is one a watch can vouch for."""
    assert file_system_type(tmp_path) in LOCAL_FILE_SYSTEMS


def test_file_system_type_follows_the_longest_mount_point(tmp_path: Path) -> None:
    """``/proc`` and a path under it are on "proc"; a path that does not exist yet is on
    its nearest existing mount."""
    assert file_system_type(Path("/proc")) == "proc"
    assert file_system_type(Path("/proc/self/status")) == "proc"
    assert file_system_type(tmp_path / "not-yet") == file_system_type(tmp_path)


def test_no_watch_on_a_file_system_others_may_write(tmp_path: Path) -> None:
    """A volume on a file system that is not known local gets no watch, and the reason
    names the file system."""
    watch, reason = open_watch(Path("/proc"))
    assert watch is None
    assert "proc" in reason and "/proc is on proc" in reason
