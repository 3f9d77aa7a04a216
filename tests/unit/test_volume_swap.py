"""The volume's swap (sources/volume_live.py) interrupted at every phase, in both modes:
repeating the swap finishes it, undoing it gives back the live data byte for byte."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.repos import tree_state
from wicked_dr.errors import RefusedError
from wicked_dr.sources import volume_live as live


class _Crash(Exception):
    pass


def _world(tmp_path: Path, mode: live.SwapMode) -> tuple[live.VolumePaths, dict[str, Any]]:
    parent = tmp_path / "portal-api"
    volume = parent / "dynamic"
    for root, marker in ((volume, "live"),):
        (root / "users").mkdir(parents=True)
        (root / "users" / "u1.json").write_text(f'{{"who": "{marker}"}}')
        (root / "meta.json").write_text('{"dynamicVersion": 3}')
        (root / "global.lock").write_text("")
    paths = live.VolumePaths(volume, mode, live.workspace_of(volume, mode), "r1")
    live.make_workspace(paths)
    (paths.staging / "users").mkdir(parents=True)
    (paths.staging / "users" / "u1.json").write_text('{"who": "snapshot"}')
    (paths.staging / "applications").mkdir()
    return paths, {"phase": "staged"}


def _recorder(state: dict[str, Any], crash_at: str | None) -> live.Recorder:
    def record(phase: str) -> None:
        state["phase"] = phase
        if phase == crash_at:
            raise _Crash(phase)
    return record


def _volume(paths: live.VolumePaths) -> dict[str, Any]:
    return {k: v for k, v in tree_state(paths.volume).items()
            if not k.startswith(live.WORKSPACE)}


@pytest.mark.parametrize("mode", ["rename", "contents"])
@pytest.mark.parametrize("crash_at", ["aside", "in"])
def test_interrupted_swap_undone_gives_back_the_live_data(
        tmp_path: Path, mode: live.SwapMode, crash_at: str) -> None:
    paths, state = _world(tmp_path, mode)
    before = _volume(paths)
    with pytest.raises(_Crash):
        live.swap(paths, _recorder(state, crash_at), state)

    live.undo_swap(paths, _recorder(state, None), state)

    assert _volume(paths) == before
    assert state["phase"] == "rolled-back"
    assert not paths.staging.exists() and not paths.pre_restore.exists()


@pytest.mark.parametrize("mode", ["rename", "contents"])
@pytest.mark.parametrize("crash_at", ["aside", "in", "swapped"])
def test_interrupted_swap_repeated_finishes_it(tmp_path: Path, mode: live.SwapMode,
                                               crash_at: str) -> None:
    paths, state = _world(tmp_path, mode)
    before = _volume(paths)
    with pytest.raises(_Crash):
        live.swap(paths, _recorder(state, crash_at), state)

    live.swap(paths, _recorder(state, None), state)

    assert (paths.volume / "users" / "u1.json").read_text() == '{"who": "snapshot"}'
    assert not (paths.volume / "global.lock").exists()
    assert {k: v for k, v in tree_state(paths.pre_restore).items()} == before
    assert paths.workspace.stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize("mode", ["rename", "contents"])
@pytest.mark.parametrize("crash_at", ["undo-in", "undo-aside"])
def test_interrupted_undo_repeated_finishes_it(tmp_path: Path, mode: live.SwapMode,
                                               crash_at: str) -> None:
    paths, state = _world(tmp_path, mode)
    before = _volume(paths)
    live.swap(paths, _recorder(state, None), state)
    with pytest.raises(_Crash):
        live.undo_swap(paths, _recorder(state, crash_at), state)

    live.undo_swap(paths, _recorder(state, None), state)

    assert _volume(paths) == before


def test_tidy_staged_empties_existing_queues_only(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    (staging / "webhooks").mkdir(parents=True)
    (staging / "webhooks" / "mailer.json").write_text('[{"id": "e1"}, {"id": "e2"}]')
    (staging / "webhooks" / "_listeners.json").write_text('[{"id": "mailer"}]')
    (staging / "users").mkdir()
    (staging / "users" / "u1.json.lock").write_text("")

    done = live.tidy_staged(staging, ["mailer", "chatbot"], None)

    assert (staging / "webhooks" / "mailer.json").read_text() == "[]"
    assert not (staging / "webhooks" / "chatbot.json").exists()
    assert (staging / "webhooks" / "_listeners.json").read_text() == '[{"id": "mailer"}]'
    assert done["queues_emptied"] == [{"listener": "mailer", "events_dropped": 2}]
    assert done["locks_removed"] == ["users/u1.json.lock"]


def test_dynamic_version_guard(tmp_path: Path) -> None:
    (tmp_path / "meta.json").write_text('{"dynamicVersion": 3}')
    with pytest.raises(RefusedError, match="dynamicVersion 4, newer than the live volume's 3"):
        live.guard_dynamic_version(b'{"dynamicVersion": 4}', tmp_path, allow_newer=False)
    assert live.guard_dynamic_version(b'{"dynamicVersion": 4}', tmp_path,
                                      allow_newer=True)["snapshot_dynamic_version"] == 4
    assert live.guard_dynamic_version(b'{"dynamicVersion": 2}', tmp_path,
                                      allow_newer=False)["live_dynamic_version"] == 3
