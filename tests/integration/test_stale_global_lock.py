"""A global.lock left by a wicked-dr that died on another host (a sidecar pod replaced by a
new one): a one-shot ``backup`` judges its creator by the repository's locks, so it removes
a dead creator's lock at once instead of holding the portal's writes off for an hour, and
leaves the lock of a creator that still renews its repository lock."""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

import pytest

from tests.fixtures.repos import Setup, backdate, cli, local_target, make_setup
from wicked_dr.holder import Holder
from wicked_dr.repository.locks import LockInfo, _write
from wicked_dr.testing.sample_volume import generate

pytestmark = pytest.mark.integration

OTHER_POD = Holder("wicked-dr-7d9f-old", "another-boot", 1, 1, secrets.token_hex(8))


def _setup(tmp_path: Path) -> Setup:
    s = make_setup(tmp_path, local_target(tmp_path))
    generate(s.volume, users=10, seed=4)
    backdate(s.volume)
    assert cli(s.config_path, "init").code == 0
    (s.volume / "global.lock").write_text(json.dumps(
        {"created_by": "wicked-dr", "holder": OTHER_POD.to_json(),
         "created": time.time() - 120}))
    return s


def test_backup_removes_the_global_lock_of_a_creator_without_a_repository_lock(
        tmp_path: Path) -> None:
    s = _setup(tmp_path)
    run = cli(s.config_path, "backup", "--json")
    assert run.code == 0, run.err
    assert json.loads(run.out)["files"] > 0
    assert not (s.volume / "global.lock").exists()


def test_backup_leaves_the_global_lock_of_a_creator_that_renews_its_lock(
        tmp_path: Path) -> None:
    s = _setup(tmp_path)
    now = time.time()
    # The creator's shared backup lock, as its process would keep renewing it.
    _write(s.repo(), LockInfo(secrets.token_hex(16), OTHER_POD, False, "backup", now,
                              now + 300), if_none_match=True)
    run = cli(s.config_path, "backup")
    assert run.code == 4, run.err
    assert "renews its repository lock" in run.err
    assert (s.volume / "global.lock").exists()
