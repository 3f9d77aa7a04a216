"""``restore --live``, ``restore --resume`` and ``kong-resync`` against a real Docker engine.

portal-api, the Kong Adapter, mailer, chatbot and Kong cannot run here, so they are played by
the stand-ins of tests/standins/ (real processes in real containers on host networking bound
to 127.0.0.1, built locally: tests/fixtures/portal_standins.py). They honour the documented
contracts: portal-api serves /ping only on valid data and refuses a second instance; the
adapter answers healthy 2 then 1 and, at every start and on /resync, recreates Kong's
consumers and oauth2 credentials with *new* UUIDs from the restored subscriptions, in a real
PostgreSQL, so the token step must re-attach the tokens to what it created. The product drives
them only through ``wicked.*_url`` and the Docker engine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures import kong_data
from tests.fixtures.portal_standins import Deployment
from tests.fixtures.repos import REPO_ROOT, Run, cli, error_lines, tree_state
from wicked_dr.testing.sample_volume import mutate

pytestmark = pytest.mark.integration
WORKSPACE = ".wicked-dr-restore"


def _config(tmp: Path, d: Deployment, **restore: Any) -> Path:
    overrides = d.config_overrides()
    doc = {"state_dir": str(tmp / "state"), "repository": {"url": str(tmp / "repo")},
           **overrides,
           "volume": {**overrides["volume"], "quiesce": "wicked-lock"},
           "restore": {"portal_api_timeout_s": 30, "kong_adapter_timeout_s": 60,
                       "owner_uid": os.geteuid(), "owner_gid": os.getegid(), **restore},
           "log": {"level": "warning", "format": "json"}}
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _live_state(volume: Path) -> dict[str, Any]:
    """The volume as portal-api sees it (wicked-dr's reserved workspace left out)."""
    return {k: v for k, v in tree_state(volume).items() if not k.startswith(WORKSPACE)}


def _report(run: Run) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(run.out)
    return report


def _tokens_attached(d: Deployment, ids: list[str]) -> int:
    with kong_data.connect(d.kong_dsn) as conn:
        row = conn.execute("SELECT count(*) FROM oauth2_tokens t JOIN oauth2_credentials c "
                           "ON c.id = t.credential_id WHERE t.id::text = ANY(%s)",
                           (ids,)).fetchone()
    return int(row[0]) if row else 0


def _started(d: Deployment) -> Callable[[str], int]:
    return lambda component: sum(e["event"] == "start" for e in d.events(component))


@pytest.mark.parametrize("layout", ["subdir", "mountpoint"])
def test_live_restore_end_to_end(tmp_path: Path, portal_deployment: Any, layout: str) -> None:
    """The incident: the volume damaged, restore --live brings back the snapshot, the adapter
    rebuilds Kong with new ids, the tokens are re-attached, mailer's queue is emptied, every
    container runs again, and the report measures each step."""
    d: Deployment = portal_deployment(layout)
    d.start_all()
    subs = kong_data.subscriptions_from_volume(d.volume_path)
    tokens = [kong_data.live_token(s.client_id, s.api_id) for s in subs[:4]]
    with kong_data.connect(d.kong_dsn) as conn:
        kong_data.add_tokens(conn, d.generation, tokens)
    config = _config(tmp_path, d)
    queue = d.volume_path / "webhooks" / "mailer.json"
    queue.write_text(json.dumps([{"id": "e1", "action": "add", "entity": "user",
                                  "data": {}, "utc": 1}]))
    assert cli(config, "backup", "--json").code == 0
    restore_target = tmp_path / "expected"
    assert cli(config, "restore", "latest", "--target", str(restore_target)).code == 0
    listeners = (d.volume_path / "webhooks" / "_listeners.json").read_bytes()
    had_chatbot_queue = (d.volume_path / "webhooks" / "chatbot.json").exists()
    before_ids = {c["username"]: c["id"] for c in d.consumers()}
    mutate(d.volume_path, 0.3, seed=7)  # the incident: data damaged after the snapshot
    damaged = _live_state(d.volume_path)
    portal_starts = _started(d)("portal-api")

    run = cli(config, "restore", "latest", "--live", "--yes", "--json")

    assert run.code == 0, run.err
    report = _report(run)
    assert report["outcome"] == "restored"
    assert [s["step"] for s in report["steps"]] == [
        "preflight", "choose", "stage", "stop singletons", "swap", "start portal-api",
        "rebuild Kong state", "restore tokens", "start mailer and chatbot"]
    assert all(s["ok"] for s in report["steps"])
    assert report["portal_api_healthy_after_s"] <= report["total_s"]
    # The volume is the snapshot (mailer's queue emptied), the damaged data kept aside.
    emptied = {"webhooks", "webhooks/mailer.json", "webhooks/chatbot.json"}
    restored = _live_state(d.volume_path)
    expected = {k: v for k, v in tree_state(restore_target).items() if k not in emptied}
    assert {k: v for k, v in restored.items() if k not in emptied} == expected
    assert json.loads(queue.read_text()) == []
    assert (d.volume_path / "webhooks" / "_listeners.json").read_bytes() == listeners
    chatbot = d.volume_path / "webhooks" / "chatbot.json"
    assert chatbot.exists() == had_chatbot_queue
    assert not had_chatbot_queue or json.loads(chatbot.read_text()) == []
    assert not (d.volume_path / "webhooks" / "nobody.json").exists()
    pre = Path(report["pre_restore_copy"])
    assert pre.is_dir() and _live_state(pre) == damaged
    assert pre.stat().st_mode & 0o777 in (0o700, 0o755) and (pre.parent.stat().st_mode
                                                             & 0o777) == 0o700
    assert not (pre.parent / "journal.json").exists()
    # portal-api started once more, on the restored data; never two at once.
    assert _started(d)("portal-api") == portal_starts + 1
    assert not any(e["event"] == "refused" for e in d.events("portal-api"))
    # The adapter rebuilt Kong with new ids; the tokens hang off the new credentials.
    after = {c["username"]: c["id"] for c in d.consumers()}
    assert after.keys() == before_ids.keys()
    assert not set(after.values()) & set(before_ids.values())
    assert report["tokens"]["restored"] == len(tokens)
    assert _tokens_attached(d, [t.id for t in tokens]) == len(tokens)
    assert [r["restarted"] for r in report["tokens"]["kong_restarts"]] == [True, True]
    assert all(d.running().values()), d.running()
    assert report["kong_adapter"]["method"] == "resync"
    assert Path(report["report_file"]).is_file()


def test_adapter_without_resync_is_rebuilt_by_its_restart(tmp_path: Path,
                                                          portal_deployment: Any) -> None:
    """An adapter without ALLOW_RESYNC (wicked's Helm chart): its start after portal-api is
    the rebuild; and kong-resync restarts it."""
    d: Deployment = portal_deployment("subdir", allow_resync=False)
    d.start_all()
    config = _config(tmp_path, d)
    assert cli(config, "backup").code == 0
    before = {c["id"] for c in d.consumers()}

    run = cli(config, "restore", "latest", "--live", "--yes", "--json")

    assert run.code == 0, run.err
    assert _report(run)["kong_adapter"]["method"] == "restart"
    rebuilt = {c["id"] for c in d.consumers()}
    assert rebuilt and not rebuilt & before
    adapter_starts = _started(d)("kong-adapter")

    resync = cli(config, "kong-resync", "--json")

    assert resync.code == 0, resync.err
    assert json.loads(resync.out)["method"] == "restart"
    assert _started(d)("kong-adapter") == adapter_starts + 1
    assert not {c["id"] for c in d.consumers()} & rebuilt


def test_kong_resync_posts_resync_when_allowed(tmp_path: Path, portal_deployment: Any) -> None:
    d: Deployment = portal_deployment("subdir")
    d.start_all()
    config = _config(tmp_path, d)
    with kong_data.connect(d.kong_dsn) as conn:
        conn.execute("DELETE FROM consumers")  # Kong's database lost its consumers

    run = cli(config, "kong-resync", "--json")

    assert run.code == 0, run.err
    result = json.loads(run.out)
    assert result["method"] == "resync" and result["detail"]["changes"] > 0
    assert len(d.consumers()) == len(kong_data.subscriptions_from_volume(d.volume_path))
    assert any(e["event"] == "resync" for e in d.events("kong-adapter"))


def test_portal_api_never_healthy_rolls_back(tmp_path: Path, portal_deployment: Any) -> None:
    """portal-api does not come up on the restored data: the live data comes back
    byte-identical and the original containers run again (exit 7)."""
    d: Deployment = portal_deployment("mountpoint")
    d.start_all()
    config = _config(tmp_path, d, portal_api_timeout_s=5)
    marker = d.volume_path / "namespaces" / "standin-refuse.json"
    marker.parent.mkdir(exist_ok=True)
    marker.write_text("[]")
    assert cli(config, "backup").code == 0
    marker.unlink()
    (d.state_dir / "unhealthy-if").write_text("namespaces/standin-refuse.json")
    before = _live_state(d.volume_path)

    run = cli(config, "restore", "latest", "--live", "--yes", "--json")

    assert run.code == 7, run.err
    report = _report(run)
    assert report["outcome"] == "rolled-back" and "portal-api did not answer" in report["error"]
    assert _live_state(d.volume_path) == before
    d.wait_portal_api()
    assert all(d.running().values()), d.running()
    assert not (d.volume_path / WORKSPACE / "journal.json").exists()
    assert not list((d.volume_path / WORKSPACE).glob("staging-*"))


def test_corrupt_snapshot_is_refused_at_staging(tmp_path: Path,
                                                portal_deployment: Any) -> None:
    """A damaged pack: the staged restore fails its check, nothing live is touched (exit 6,
    no container stopped)."""
    d: Deployment = portal_deployment("subdir")
    d.start_all()
    config = _config(tmp_path, d)
    assert cli(config, "backup").code == 0
    for pack in (tmp_path / "repo").rglob("data/*/*"):
        data = bytearray(pack.read_bytes())
        data[len(data) // 2] ^= 1
        pack.write_bytes(bytes(data))
    before = _live_state(d.volume_path)
    stops = sum(e["event"] == "stop" for e in d.events("portal-api"))

    run = cli(config, "restore", "latest", "--live", "--yes")

    assert run.code == 6, run.err
    assert "nothing live" in " ".join(error_lines(run))
    assert _live_state(d.volume_path) == before
    assert sum(e["event"] == "stop" for e in d.events("portal-api")) == stops
    assert all(d.running().values())
    assert not (d.volume_path.parent / WORKSPACE / "journal.json").exists()


KILL_MID_SWAP = """
import os, signal, sys
from wicked_dr.sources import volume_live
real = volume_live._move_entries
calls = []
def move_then_die(source, dest):
    calls.append(source)
    if len(calls) == 2:  # the staged entries are being moved in: half of them, then kill -9
        names = sorted(n for n in os.listdir(source) if not n.startswith(".wicked-dr-"))
        for name in names[: len(names) // 2]:
            os.rename(os.path.join(source, name), os.path.join(dest, name))
        os.kill(os.getpid(), signal.SIGKILL)
    return real(source, dest)
volume_live._move_entries = move_then_die
from wicked_dr.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_kill_mid_swap_then_resume_rolls_back(tmp_path: Path, portal_deployment: Any) -> None:
    """kill -9 while the staged data is half moved in (a mount point: contents swapped):
    every other command refuses naming the journal; restore --resume puts the live data
    back byte-identical and starts the containers that ran."""
    d: Deployment = portal_deployment("mountpoint")
    d.start_all()
    config = _config(tmp_path, d)
    assert cli(config, "backup").code == 0
    mutate(d.volume_path, 0.2, seed=3)
    before = _live_state(d.volume_path)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}

    killed = subprocess.run([sys.executable, "-c", KILL_MID_SWAP, "--config", str(config),
                             "restore", "latest", "--live", "--yes"], env=env,
                            capture_output=True, text=True, timeout=300, check=False)

    assert killed.returncode == -signal.SIGKILL, killed.stderr
    journal = d.volume_path / WORKSPACE / "journal.json"
    assert json.loads(journal.read_text())["sources"]["volume"]["phase"] == "in"
    assert _live_state(d.volume_path) != before  # really half swapped
    refused = cli(config, "backup")
    assert refused.code == 6 and "restore --resume" in " ".join(error_lines(refused))

    resumed = cli(config, "restore", "--resume", "--json")

    assert resumed.code == 7, resumed.err
    assert _report(resumed)["outcome"] == "rolled-back"
    assert _live_state(d.volume_path) == before
    assert not journal.exists()
    d.wait_portal_api()
    assert all(d.running().values()), d.running()
    assert cli(config, "backup").code == 0


def test_without_container_control_an_answering_portal_api_is_refused(
        tmp_path: Path, portal_deployment: Any) -> None:
    """No containers.* set and portal-api answers /ping: refused (exit 6), no flag helps."""
    d: Deployment = portal_deployment("subdir")
    d.start_all()
    config = _config(tmp_path, d)
    doc = yaml.safe_load(config.read_text())
    doc.pop("containers")
    config.write_text(yaml.safe_dump(doc))
    assert cli(config, "backup").code == 0
    before = _live_state(d.volume_path)

    run = cli(config, "restore", "latest", "--live", "--yes", "--allow-newer-data")

    assert run.code == 6
    assert "portal-api answers" in " ".join(error_lines(run))
    assert _live_state(d.volume_path) == before


def test_interrupt_while_staging_rolls_back_with_nothing_live_touched(tmp_path: Path) -> None:
    """SIGTERM/SIGINT (the run's cancel token) in the middle of staging: exit 7, the report
    says interrupted, the live volume and the workspace as before (no journal, no staging).
    No container control and nothing answering at portal-api's address (a closed port)."""
    from wicked_dr.actions.common import RunOptions
    from wicked_dr.actions.restore_live import LiveRestoreEnded, run_restore_live
    from wicked_dr.cancel import CancelToken
    from wicked_dr.config import load_config
    from wicked_dr.testing.sample_volume import generate

    volume = tmp_path / "portal-api" / "dynamic"
    generate(volume, 40, seed=2)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump({
        "state_dir": str(tmp_path / "state"), "repository": {"url": str(tmp_path / "repo")},
        "volume": {"path": str(volume)},
        "wicked": {"portal_api_url": "http://127.0.0.1:9", "kong_adapter_url":
                   "http://127.0.0.1:9"},
        "log": {"level": "warning"}}))
    assert cli(config_path, "backup").code == 0
    mutate(volume, 0.3, seed=4)
    before = _live_state(volume)
    token = CancelToken()
    seen: list[str] = []

    def progress(kind: str, amount: int) -> None:
        seen.append(kind)
        token.cancel("SIGTERM")  # the first file written: the operator presses Ctrl-C

    with pytest.raises(LiveRestoreEnded) as ended:
        run_restore_live(load_config(config_path, {}), "latest",
                         options=RunOptions(progress=progress, cancel=token))

    report = ended.value.report
    assert seen and ended.value.exit_code == 7
    assert report.outcome == "rolled-back" and report.interrupted
    assert [s["step"] for s in report.steps][-2:] == ["stage", "roll back"]
    assert _live_state(volume) == before
    workspace = volume.parent / WORKSPACE
    assert not (workspace / "journal.json").exists()
    assert not list(workspace.glob("staging-*")) and not list(workspace.glob("pre-restore-*"))
    assert cli(config_path, "backup").code == 0  # nothing left that refuses
