"""``wicked-dr verify`` and ``drill`` end to end: a real repository, the real Docker engine, the
locally built ``base`` image (python3) as ``verify.image``; no registry, no network.

The host-side restore already checks every hash, so a damaged pack alone proves nothing about
the probe: a file is also changed *inside the scratch volume* before the checker runs, and
the probe must name it. Every outcome leaves no scratch container or volume behind, and the
verification record decides what ``restore`` (latest-verified) takes."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml

from tests.fixtures.docker_engine import scratch_left
from tests.fixtures.images import ImageBuilder
from tests.fixtures.repos import (
    Setup,
    backdate,
    cli,
    flip_byte,
    verify_setup,
)
from wicked_dr.actions.drill import DrillFailed, run_drill
from wicked_dr.actions.verify import VerifyFailed, run_verify
from wicked_dr.config import load_config
from wicked_dr.engine.catalog import snapshot_ids
from wicked_dr.portal.scratch import LABEL_PID, LABEL_SCRATCH
from wicked_dr.repository.index import read_index
from wicked_dr.repository.layout import object_name
from wicked_dr.repository.verification import load_verification

pytestmark = pytest.mark.integration


@pytest.fixture
def setup(tmp_path: Path, image_builder: ImageBuilder) -> Setup:
    """A local repository with one snapshot of a small sample volume; verify runs the
    ``base`` test image and never pulls."""
    return verify_setup(tmp_path, image_builder.base(), users=15, seed=12)


def _verify(s: Setup, **kwargs: Any) -> tuple[bool, list[str], list[str]]:
    """(ok, problems, warnings) of run_verify on the newest snapshot."""
    config = load_config(s.config_path)
    try:
        result = run_verify(config, "latest", **kwargs)
    except VerifyFailed as exc:
        result = exc.result
    probes = result.probes
    return (result.ok, [p for probe in probes for p in probe["problems"]],
            [w for probe in probes for w in probe["warnings"]])


def test_healthy_snapshot_verifies_and_restore_takes_it(setup: Setup,
                                                        docker_client: docker.DockerClient,
                                                        ) -> None:
    run = cli(setup.config_path, "verify", "--json")
    assert run.code == 0, run.err
    result = json.loads(run.out)
    assert result["ok"] and [p["name"] for p in result["probes"]] == ["volume"]
    assert result["probes"][0]["figures"]["files"] > 50
    newest = snapshot_ids(setup.repo())[-1]
    record = load_verification(setup.repo(), newest)
    assert record is not None and record.ok
    rows = json.loads(cli(setup.config_path, "snapshots", "--json").out)
    assert rows[-1]["verification"] == "verified"
    assert scratch_left(docker_client) == []


def _replace_in_volume(client: docker.DockerClient, image: str, volume: str, rel: str,
                       content: bytes) -> None:
    """Overwrite one file inside a scratch volume (the test's own helper container: network
    none, never started; the engine extracts the archive)."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        info = tarfile.TarInfo(rel)
        info.size = len(content)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(content))
    helper = client.containers.create(image, ["true"],
                                      volumes={volume: {"bind": "/data", "mode": "rw"}},
                                      network_mode="none")
    try:
        assert helper.put_archive("/data", data.getvalue())
    finally:
        helper.remove(force=True)


def test_a_file_changed_inside_the_scratch_volume_is_named(
        setup: Setup, docker_client: docker.DockerClient, image_builder: ImageBuilder) -> None:
    """The host restored every byte correctly; the probe still checks from inside: a user
    file changed in the scratch volume fails verification, naming it."""
    victim = sorted(p.relative_to(setup.volume).as_posix()
                    for p in (setup.volume / "users").glob("*.json")
                    if p.name != "_index.json")[0]
    ok, problems, _ = _verify(setup, before_check=lambda volume: _replace_in_volume(
        docker_client, image_builder.base(), volume, victim, b'{"id": "someone else"}'))
    assert not ok and any(victim in p for p in problems), problems
    assert scratch_left(docker_client) == []


@pytest.mark.parametrize("damage", ["broken-json", "index-points-to-missing-user"])
def test_broken_data_fails_verification_naming_the_file_and_restore_skips_it(
        setup: Setup, docker_client: docker.DockerClient, damage: str) -> None:
    """Data portal-api would trip over, backed up as it is: verify exits 3 naming the file,
    the record says failed, and a restore without a selector takes the older verified
    snapshot instead."""
    assert cli(setup.config_path, "verify").code == 0
    good = snapshot_ids(setup.repo())[-1]
    if damage == "broken-json":
        named = "applications/_index.json"
        (setup.volume / named).write_text('[{"id": ')
    else:
        named = "users/_index.json"
        index = json.loads((setup.volume / named).read_text())
        index.append({"id": "0000000000000000000000000000beef", "name": "Ghost"})
        (setup.volume / named).write_text(json.dumps(index, indent=2))
    backdate(setup.volume)
    assert cli(setup.config_path, "backup").code == 0
    run = cli(setup.config_path, "verify", "--json")
    assert run.code == 3
    problems = json.loads(run.out)["probes"][0]["problems"]
    assert any(named in p or "beef" in p for p in problems), problems
    rows = json.loads(cli(setup.config_path, "snapshots", "--json").out)
    assert [r["verification"] for r in rows] == ["verified", "failed"]
    restore = cli(setup.config_path, "restore", "--target", str(setup.tmp / "out"), "--json")
    assert restore.code == 0 and json.loads(restore.out)["snapshot"] == good
    assert scratch_left(docker_client) == []


def test_stale_subscription_index_entry_is_a_warning_only(
        setup: Setup, docker_client: docker.DockerClient) -> None:
    """wicked's normal untidiness passes, with a warning."""
    stale = setup.volume / "subscription_index" / "ffffffffffffffffffffffffffffffff.json"
    stale.write_text('{"application": "gone", "api": "petstore"}')
    backdate(setup.volume)
    assert cli(setup.config_path, "backup").code == 0
    ok, problems, warnings = _verify(setup)
    assert ok and not problems, problems
    assert any("subscription_index" in w for w in warnings)


def test_damaged_pack_fails_the_probe_and_is_recorded(
        setup: Setup, docker_client: docker.DockerClient) -> None:
    repo = setup.repo()
    pack = next(p.pack_id for i in repo.list_ids("index") for p in read_index(repo, i))
    flip_byte(setup, object_name("data", pack))
    ok, problems, _ = _verify(setup)
    assert not ok and any(pack in p for p in problems), problems
    assert scratch_left(docker_client) == []


def test_drill_reports_figures_and_a_failed_drill_still_writes_its_report(
        setup: Setup, tmp_path: Path, docker_client: docker.DockerClient) -> None:
    """A drill measures RTO, data age, the RPO gap, files and bytes into Markdown and JSON
    and the repository's history; a drill whose probe fails writes its report, then exit 3."""
    config = load_config(setup.config_path)
    report = run_drill(config, report_dir=tmp_path / "reports").report
    assert report["ok"] and report["rto_s"] > 0 and report["files"] > 50
    assert report["bytes"] > 0 and 0 <= report["data_age_s"] <= report["rpo_gap_s"]
    markdown = (tmp_path / "reports" / f"drill-{report['id']}.md").read_text()
    assert "RTO, data path" in markdown and "## RTO over the last drills" in markdown
    saved = json.loads((tmp_path / "reports" / f"drill-{report['id']}.json").read_text())
    assert saved == report
    (setup.volume / "users" / "_index.json").write_text("not json")
    backdate(setup.volume)
    assert cli(setup.config_path, "backup").code == 0
    with pytest.raises(DrillFailed) as failed:
        run_drill(config)
    assert not failed.value.result.report["ok"]
    history = json.loads(cli(setup.config_path, "drill", "--history", "--json").out)
    assert [d["ok"] for d in history["drills"]] == [True, False]
    assert scratch_left(docker_client) == []


def test_verify_sweeps_what_a_killed_verification_left(
        setup: Setup, docker_client: docker.DockerClient) -> None:
    """A volume labelled as a scratch resource of a process that is gone (as a kill -9 leaves
    it) is removed by the next verify's sweep; the sweep is counted in the result."""
    import subprocess
    import sys

    from wicked_dr.portal.scratch import owner_labels

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    labels = owner_labels() | {LABEL_SCRATCH: "1", LABEL_PID: gone.stdout.strip()}
    leftover = docker_client.volumes.create(name="wicked-dr-scratch-test-leftover",
                                            labels=labels)
    run = cli(setup.config_path, "verify", "--json")
    assert run.code == 0, run.err
    assert json.loads(run.out)["swept"] >= 1
    assert leftover.name not in [v.name for v in docker_client.volumes.list()]


@pytest.mark.parametrize(("memory_mib", "options"), [
    (256, {"type": "tmpfs", "device": "tmpfs", "o": "size=256m"}), (0, {})],
    ids=["in-memory", "on-disk"])
def test_scratch_data_volume_in_memory_or_on_disk(
        setup: Setup, docker_client: docker.DockerClient, memory_mib: int,
        options: dict[str, str]) -> None:
    """verify.scratch_memory_mib puts the restored files on a tmpfs volume of that size, held
    mounted for the whole verification: the checker finds every file there (a volume filled
    while nothing held it mounted would look empty); 0 puts them on the host's disk."""
    doc = yaml.safe_load(setup.config_path.read_text())
    doc["verify"]["scratch_memory_mib"] = memory_mib
    setup.config_path.write_text(yaml.safe_dump(doc))
    seen: list[dict[str, str]] = []

    def inspect(volume: str) -> None:
        seen.append(docker_client.volumes.get(volume).attrs["Options"] or {})

    ok, problems, _ = _verify(setup, before_check=inspect)
    assert ok, problems[:3]
    assert seen == [options]
    assert scratch_left(docker_client) == []


def test_a_full_in_memory_scratch_volume_says_which_key_to_raise(
        setup: Setup, docker_client: docker.DockerClient) -> None:
    """Files larger than verify.scratch_memory_mib: exit 1 (nothing proven either way, no
    record), one line naming the key; nothing left behind."""
    (setup.volume / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    backdate(setup.volume)
    assert cli(setup.config_path, "backup").code == 0
    doc = yaml.safe_load(setup.config_path.read_text())
    doc["verify"]["scratch_memory_mib"] = 1
    setup.config_path.write_text(yaml.safe_dump(doc))
    run = cli(setup.config_path, "verify")
    assert run.code == 1, run.err
    assert "verify.scratch_memory_mib" in run.err and len(run.err.strip().splitlines()) == 1
    assert load_verification(setup.repo(), snapshot_ids(setup.repo())[-1]) is None
    assert scratch_left(docker_client) == []
