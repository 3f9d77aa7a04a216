"""A third source is one registry entry: a toy source added through ``sources.REGISTRY``
alone is backed up, listed, checked and restored by the unchanged actions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fixtures.repos import RepoTarget, Setup, assert_same_tree, backdate, cli, make_setup
from wicked_dr import sources
from wicked_dr.config import Config
from wicked_dr.repository.snapshot import SourceRecord
from wicked_dr.sources.base import (
    BackupContext,
    DirRestore,
    SnapshotSink,
    SourceBackup,
    SourceKind,
    TreeReader,
)
from wicked_dr.testing.sample_volume import generate

pytestmark = pytest.mark.integration
PAYLOAD = b"toy data, " * 5000


class ToySource:
    """A stream source with behaviour: hands its bytes over in uneven chunks and writes them
    back as one file."""

    name = "toy"
    kind: SourceKind = "stream"
    configured = True

    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def check_ready(self, *, force: bool) -> None:
        """Always ready."""

    def backup(self, sink: SnapshotSink, context: BackupContext) -> SourceBackup:
        chunks = (self.payload[i:i + 7001] for i in range(0, len(self.payload), 7001))
        stream = sink.add_stream(self.name, chunks)
        return SourceBackup({"note": "toy", "bytes": len(self.payload)}, stream=stream)

    def restore_to_dir(self, reader: TreeReader, record: SourceRecord,
                       target: Path) -> DirRestore:
        assert record.stream is not None
        target.mkdir(parents=True, exist_ok=True)
        path = target / "toy.bin"
        path.write_bytes(b"".join(reader.stream(record.stream)))
        return DirRestore(self.name, {"bytes": record.stream.size}, str(path))


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Setup:
    """A sample volume, a local repository, and the toy source registered (nothing else)."""
    def toy(config: Config) -> ToySource:
        return ToySource(PAYLOAD)

    monkeypatch.setitem(sources.REGISTRY, "toy", toy)
    s = make_setup(tmp_path, RepoTarget("local", {"url": str(tmp_path / "repo")}))
    generate(s.volume, users=5, seed=4)
    backdate(s.volume)
    return s


def test_toy_source_round_trips_through_backup_and_restore_target(setup: Setup) -> None:
    """backup includes the registered source; restore --target writes the volume by default
    and the toy's bytes only when selected with --source."""
    run = cli(setup.config_path, "backup", "--json")
    assert run.code == 0, run.err
    assert json.loads(run.out)["sources"] == ["volume", "toy"]
    rows = json.loads(cli(setup.config_path, "snapshots", "--json").out)
    assert rows[0]["sources"] == ["toy", "volume"]  # as stored: names sorted

    run = cli(setup.config_path, "restore", "latest", "--target", str(setup.tmp / "files"))
    assert run.code == 0, run.err
    assert_same_tree(setup.volume, setup.tmp / "files")

    out = setup.tmp / "toy"
    run = cli(setup.config_path, "restore", "latest", "--target", str(out), "--source", "toy",
              "--json")
    assert run.code == 0, run.err
    assert json.loads(run.out)["sources"] == {"toy": {"path": str(out / "toy.bin"),
                                                      "bytes": len(PAYLOAD)}}
    assert sorted(p.name for p in out.iterdir()) == ["toy.bin"]
    assert (out / "toy.bin").read_bytes() == PAYLOAD


def test_toy_source_stream_checked_and_unknown_source_named(setup: Setup) -> None:
    """check --read-data reads the toy's stream blobs; an unknown --source is a usage error
    naming the known sources."""
    assert cli(setup.config_path, "backup").code == 0
    run = cli(setup.config_path, "check", "--read-data", "--json")
    assert run.code == 0, run.err
    assert json.loads(run.out)["blobs_referenced"] > 0
    run = cli(setup.config_path, "restore", "latest", "--target", str(setup.tmp / "x"),
              "--source", "nope")
    assert run.code == 2
    assert "known sources: volume, wicked_db, kong_tokens, toy" in run.err
