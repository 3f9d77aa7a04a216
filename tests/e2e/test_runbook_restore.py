"""runbooks/restore.md, run as written against the stand-ins (tests/fixtures/portal_standins.py:
real containers for portal-api, the Kong Adapter, mailer, chatbot and Kong, which cannot run
here).

The commands are read from the runbook's first ``sh`` block ("three commands") and run as
``wicked-dr`` processes with ``WICKED_DR_CONFIG`` set, the placeholder ``<INCIDENT_TIME_UTC>``
replaced by a time after the snapshot, and the confirmation typed on a real terminal (a pty),
as an on-call engineer would.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.images import ImageBuilder
from tests.fixtures.portal_standins import Deployment
from tests.fixtures.repos import REPO_ROOT, tree_state
from wicked_dr.testing.sample_volume import mutate

pytestmark = pytest.mark.integration
RUNBOOK = REPO_ROOT / "runbooks" / "restore.md"


def _blocks(text: str) -> list[list[str]]:
    """The commands of each ```sh block (comments and blank lines dropped)."""
    blocks = re.findall(r"```sh\n(.*?)```", text, re.DOTALL)
    return [[line.split("#")[0].strip() for line in block.splitlines()
             if line.split("#")[0].strip()] for block in blocks]


def _run(command: str, env: dict[str, str], *, answer: bytes | None = None) -> str:
    argv = shlex.split(command)
    assert argv[0] == "wicked-dr", command
    full = [sys.executable, "-m", "wicked_dr.cli", *argv[1:]]
    if answer is None:
        done = subprocess.run(full, env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=600, check=False)
        assert done.returncode == 0, f"{command}: {done.stderr}"
        return done.stdout
    controller, terminal = os.openpty()
    try:
        proc = subprocess.Popen(full, env=env, cwd=REPO_ROOT, stdin=terminal,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        os.write(controller, answer)
        out, err = proc.communicate(timeout=600)
    finally:
        os.close(controller)
        os.close(terminal)
    assert proc.returncode == 0, f"{command}: {err.decode()}"
    return out.decode()


def test_losing_the_volume_takes_the_runbooks_three_commands(
        tmp_path: Path, portal_deployment: Any, image_builder: ImageBuilder) -> None:
    d: Deployment = portal_deployment("subdir")
    d.start_all()
    overrides = d.config_overrides()
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "state_dir": str(tmp_path / "state"), "repository": {"url": str(tmp_path / "repo")},
        **overrides, "verify": {"image": image_builder.base(), "pull": "never",
                                "postgres_image": image_builder.postgres()},
        "log": {"level": "warning"}}))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "WICKED_DR_CONFIG": str(config)}
    _run("wicked-dr backup", env)
    _run("wicked-dr verify", env)
    good = tree_state(d.volume_path)
    incident = (datetime.now(UTC) + timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%S")
    mutate(d.volume_path, 0.5, seed=11)  # the incident
    commands = _blocks(RUNBOOK.read_text())[0]
    assert len(commands) == 3, commands

    listed = _run(commands[0], env)
    dry = _run(commands[1].replace("<INCIDENT_TIME_UTC>", incident), env)
    done = _run(commands[2].replace("<INCIDENT_TIME_UTC>", incident), env, answer=b"yes\n")

    assert "verified" in listed
    assert "dry run: nothing changed" in dry
    assert "restored in" in done and "check:" in done
    restored = tree_state(d.volume_path)
    queues = {"webhooks", "webhooks/mailer.json", "webhooks/chatbot.json"}
    assert {k: v for k, v in restored.items() if k not in queues and
            not k.startswith(".wicked-dr-")} == {k: v for k, v in good.items()
                                                 if k not in queues}
    assert all(d.running().values()), d.running()


def test_runbook_commands_parse() -> None:
    """Every command of every sh block is a wicked-dr command the parser accepts, or a
    documented shell step of the manual fallback."""
    from wicked_dr.cli import build_parser

    for block in _blocks(RUNBOOK.read_text()):
        for command in block:
            argv = shlex.split(command.replace("<", "").replace(">", ""))
            if argv[0] == "wicked-dr":
                build_parser().parse_args(argv[1:])
            else:
                assert argv[0] in {"curl", "docker", "mv", "echo"}, command
