"""The sample volume generator writes wicked's real layout, consistently and reproducibly."""

from __future__ import annotations

import gc
import hashlib
import json
import re
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from wicked_dr.testing.sample_volume import (
    FOLDERS,
    LISTENERS,
    VolumeStats,
    dumps,
    generate,
    mutate,
)

USERS = 300


def _tree(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under root."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _load(root: Path, rel: str) -> Any:
    return json.loads((root / rel).read_text(encoding="utf-8"))


def _entity_files(root: Path, folder: str, suffix: str = ".json") -> set[str]:
    return {p.name[: -len(suffix)] for p in (root / folder).iterdir()
            if p.name.endswith(suffix) and not p.name.startswith("_")}


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, VolumeStats]:
    root = tmp_path_factory.mktemp("vol")
    return root, generate(root, USERS, seed=7, keep_user_ids=True)


def test_generate_any_size_writes_every_folder_and_top_file(
        volume: tuple[Path, VolumeStats]) -> None:
    """Every folder and well-known file of portal-api's dynamic data folder exists."""
    root, _ = volume
    for folder in FOLDERS:
        assert (root / folder).is_dir(), folder
    for rel in ("meta.json", "users/_index.json", "applications/_index.json",
                "approvals/_index.json", "verifications/_index.json",
                "webhooks/_listeners.json", *(f"webhooks/{lid}.json" for lid in LISTENERS)):
        assert (root / rel).is_file(), rel
    assert [entry["id"] for entry in _load(root, "webhooks/_listeners.json")] == list(LISTENERS)
    assert set(_load(root, "meta.json")) == {"dynamicVersion", "config_hash", "principal"}


def test_generate_n_users_writes_about_five_files_per_user(
        volume: tuple[Path, VolumeStats]) -> None:
    """N users give about 5 N files, and the stats count exactly what is on disk."""
    root, stats = volume
    files = [p for p in root.rglob("*") if p.is_file()]
    assert stats.files == len(files)
    assert stats.bytes == sum(p.stat().st_size for p in files)
    assert 4.0 * USERS <= len(files) <= 6.0 * USERS


def test_generate_same_seed_writes_identical_bytes(tmp_path: Path) -> None:
    """The same seed gives byte-identical volumes; another seed gives different content."""
    generate(tmp_path / "a", 50, seed=1)
    generate(tmp_path / "b", 50, seed=1)
    generate(tmp_path / "c", 50, seed=2)
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")
    assert set(_tree(tmp_path / "a").values()).isdisjoint(
        v for k, v in _tree(tmp_path / "c").items() if k.startswith("users/"))


def test_generate_user_index_lists_exactly_the_user_files(
        volume: tuple[Path, VolumeStats]) -> None:
    """users/_index.json names each users/<id>.json once, with the file's e-mail."""
    root, stats = volume
    index = _load(root, "users/_index.json")
    assert [e["id"] for e in index] == stats.user_ids
    assert {e["id"] for e in index} == _entity_files(root, "users")
    for entry in index[:50]:
        assert _load(root, f"users/{entry['id']}.json")["email"] == entry["email"]


def test_generate_app_owners_match_user_applications(volume: tuple[Path, VolumeStats]) -> None:
    """app.owners[].userId and user.applications[].id point at each other, both ways."""
    root, stats = volume
    from_users = {(app["id"], uid) for uid in stats.user_ids
                  for app in _load(root, f"users/{uid}.json")["applications"]}
    app_ids = {e["id"] for e in _load(root, "applications/_index.json")}
    assert app_ids == _entity_files(root, "applications")
    from_apps = {(a, o["userId"]) for a in app_ids
                 for o in _load(root, f"applications/{a}.json")["owners"]}
    assert from_users == from_apps
    assert any(len(_load(root, f"applications/{a}.json")["owners"]) > 1 for a in app_ids)


def test_generate_untidy_leaves_orphaned_subs_and_stale_index(
        volume: tuple[Path, VolumeStats]) -> None:
    """Each app has a subs file whose entries name it; extra subs files are the counted orphans."""
    root, stats = volume
    app_ids = {e["id"] for e in _load(root, "applications/_index.json")}
    subs_files = _entity_files(root, "subscriptions", ".subs.json")
    assert app_ids <= subs_files
    assert len(subs_files - app_ids) == stats.orphaned_subscription_files >= 1
    for app_id in subs_files:
        assert {s["application"] for s in _load(root, f"subscriptions/{app_id}.subs.json")} <= {
            app_id}
    stale = [c for c in _entity_files(root, "subscription_index")
             if _load(root, f"subscription_index/{c}.json")["application"] not in app_ids]
    assert len(stale) == stats.stale_index_entries >= 1


def test_generate_secrets_have_wicked_formats(volume: tuple[Path, VolumeStats]) -> None:
    """Passwords are bcrypt-shaped, apikey/clientSecret are '!'+hex, clientId plain hex."""
    root, stats = volume
    bcrypt = re.compile(r"^\$2a\$10\$[./A-Za-z0-9]{53}$")
    passwords = [d["password"] for d in (_load(root, f"users/{u}.json") for u in stats.user_ids)
                 if "password" in d]
    assert passwords and all(bcrypt.match(p) for p in passwords)
    subs = [s for f in (root / "subscriptions").iterdir() for s in json.loads(f.read_text())]
    oauth = [s for s in subs if "clientId" in s]
    keyed = [s for s in subs if "apikey" in s]
    assert oauth and keyed
    assert all(re.fullmatch(r"[0-9a-f]{40}", s["clientId"]) for s in oauth)
    assert all(re.fullmatch(r"![0-9a-f]+", s["clientSecret"]) for s in oauth)
    assert all(re.fullmatch(r"![0-9a-f]+", s["apikey"]) for s in keyed)
    assert {s["auth"] for s in subs} == {"oauth2", "key-auth"}
    for s in oauth:
        if s["application"] in _entity_files(root, "applications"):
            assert _load(root, f"subscription_index/{s['clientId']}.json") == {
                "application": s["application"], "api": s["api"]}


def test_generate_formats_json_like_json_stringify(volume: tuple[Path, VolumeStats]) -> None:
    """Every file is JSON.stringify(x, null, 2) output: 2-space indent, no final newline."""
    root, _ = volume
    for path in root.rglob("*.json"):
        text = path.read_text(encoding="utf-8")
        assert text == dumps(json.loads(text)), path


def test_generate_many_users_keeps_memory_bounded(tmp_path: Path) -> None:
    """Peak Python memory does not grow with the user count (generation streams)."""
    peaks = []
    generate(tmp_path / "warm-up", 20, seed=1)  # one-time imports and caches are not growth
    for users in (200, 1600):
        gc.collect()
        tracemalloc.start()
        generate(tmp_path / str(users), users, seed=1)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < peaks[0] * 2


def test_mutate_fraction_changes_about_that_many_files(tmp_path: Path) -> None:
    """mutate(0.05) changes, adds or deletes about 5 % of files, and reports exactly those."""
    root = tmp_path / "v"
    generate(root, USERS, seed=3)
    before = _tree(root)
    changed = mutate(root, 0.05, seed=1)
    after = _tree(root)
    differing = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert set(changed) == differing
    target = 0.05 * len(before)
    assert 0.8 * target <= len(differing) <= 1.25 * target
    assert any(k not in after for k in before) and any(k not in before for k in after)
    assert "meta.json" in differing


def test_mutate_meta_and_passwords_rewrite_same_size(tmp_path: Path) -> None:
    """meta.json's heartbeat and password changes rewrite files without changing their size."""
    root = tmp_path / "v"
    generate(root, 100, seed=3)
    sizes = {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}
    changed = mutate(root, 0.2, seed=4)
    same_size = [c for c in changed if (root / c).exists() and c in sizes
                 and (root / c).stat().st_size == sizes[c]]
    assert "meta.json" in same_size
    assert any(c.startswith("users/") and not c.endswith("_index.json") for c in same_size)


def test_mutate_keeps_user_and_owner_indexes_consistent(tmp_path: Path) -> None:
    """After mutate the user index still matches the user files and owners still match."""
    root = tmp_path / "v"
    generate(root, USERS, seed=5)
    mutate(root, 0.1, seed=6)
    index = _load(root, "users/_index.json")
    assert len({e["id"] for e in index}) == len(index)
    assert {e["id"] for e in index} == _entity_files(root, "users")
    from_users = {(app["id"], e["id"]) for e in index
                  for app in _load(root, f"users/{e['id']}.json")["applications"]}
    from_apps = {(a, o["userId"]) for a in _entity_files(root, "applications")
                 for o in _load(root, f"applications/{a}.json")["owners"]}
    assert from_users == from_apps
    pool = {e["userId"] for e in _load(root, "registrations/wicked.json")}
    assert pool <= {e["id"] for e in index}
    for path in root.rglob("*.json"):
        text = path.read_text(encoding="utf-8")
        assert text == dumps(json.loads(text)), path
