"""Fixtures every unit test module shares."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fixtures.minimal import minimal_volume_and_config


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No WICKED_DR_* variable of the calling shell leaks into a test."""
    for name in list(os.environ):
        if name.startswith("WICKED_DR_"):
            monkeypatch.delenv(name)


@pytest.fixture()
def setup(tmp_path: Path) -> Path:
    """A config file pointing at a minimal wicked volume and a local repository in tmp_path
    (a module may define its own ``setup``)."""
    return minimal_volume_and_config(tmp_path)


@pytest.fixture()
def backed_up(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """A minimal wicked volume (with users/u1.json) backed up once into an unencrypted local
    repository, what a bucket writer without the key can forge; returns the config."""
    from wicked_dr.cli import main

    config = minimal_volume_and_config(tmp_path)
    (tmp_path / "volume" / "users" / "u1.json").write_text('{"id": "u1"}', encoding="utf-8")
    assert main(["--config", str(config), "backup"]) == 0
    capsys.readouterr()
    return config
