"""Where a restore may write: safe_destination and the target check."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from wicked_dr.engine.restore import check_target, safe_destination
from wicked_dr.errors import IntegrityError, RefusedError


@pytest.fixture
def root(tmp_path: Path) -> Path:
    target = tmp_path / "target"
    target.mkdir()
    return target.resolve()


@pytest.mark.parametrize("rel", ["users/1.json", "meta.json", "a/b/c/d.json", "..hidden",
                                 "x..y", "dir with space/f"])
def test_safe_destination_ordinary_paths_inside_root(root: Path, rel: str) -> None:
    """Ordinary relative paths (even with dots inside names) map under the root."""
    assert safe_destination(root, rel) == root / rel


@pytest.mark.parametrize("rel", ["", "..", "../x", "a/../../x", "a/../b", "/etc/passwd",
                                 "./a", "a//b", "a/./b", "a/", "a\0b"])
def test_safe_destination_escaping_or_unnormal_paths_refused(root: Path, rel: str) -> None:
    """'..', '.', empty components, absolute paths and NUL bytes are refused."""
    with pytest.raises(IntegrityError, match="outside the target"):
        safe_destination(root, rel)


def test_safe_destination_through_symlink_to_outside_refused(root: Path, tmp_path: Path) -> None:
    """A path whose parent is a symlink pointing outside the root is refused."""
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, root / "link")
    with pytest.raises(IntegrityError, match="symlink"):
        safe_destination(root, "link/evil.json")


def test_safe_destination_through_nested_symlink_refused(root: Path, tmp_path: Path) -> None:
    """A symlink higher up the path that leads outside is refused too."""
    outside = tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    os.symlink(outside, root / "link")
    with pytest.raises(IntegrityError):
        safe_destination(root, "link/deep/evil.json")


def test_safe_destination_through_symlink_inside_root_refused(root: Path) -> None:
    """Even a symlink that stays inside the root is not followed as a parent."""
    (root / "real").mkdir()
    os.symlink(root / "real", root / "alias")
    with pytest.raises(IntegrityError, match="symlink"):
        safe_destination(root, "alias/f.json")


def test_check_target_empty_or_missing_accepted(tmp_path: Path) -> None:
    """A missing or empty directory is a fine target."""
    check_target(tmp_path / "absent", force=False)
    (tmp_path / "empty").mkdir()
    check_target(tmp_path / "empty", force=False)


def test_check_target_non_empty_refused_unless_force(tmp_path: Path) -> None:
    """A non-empty directory is refused (RefusedError) unless forced; a file always."""
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(RefusedError, match="not empty"):
        check_target(tmp_path / "full", force=False)
    check_target(tmp_path / "full", force=True)
    (tmp_path / "file").write_text("")
    with pytest.raises(RefusedError, match="not a directory"):
        check_target(tmp_path / "file", force=True)
