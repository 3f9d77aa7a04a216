"""The stdlib-only data checker (wicked_dr/verify_data.py) and ``wicked-dr verify-data``:
a realistic volume passes with its manifest; every kind of damage is a problem naming the
file; wicked's normal untidiness is a warning only."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from wicked_dr import verify_data
from wicked_dr.cli import main
from wicked_dr.errors import ExitCode
from wicked_dr.testing.sample_volume import dumps, generate
from wicked_dr.verify_data import Findings, check_volume, manifest_line

CHECKER = Path(verify_data.__file__)


@pytest.fixture()
def volume(tmp_path: Path) -> Path:
    """A generated 60-user volume, with the untidiness generate() adds on purpose (one
    orphaned subscriptions file, one stale subscription_index entry)."""
    root = tmp_path / "volume"
    stats = generate(root, 60, seed=7)
    assert stats.orphaned_subscription_files == 1 and stats.stale_index_entries == 1
    return root


def _manifest(root: Path, out: Path) -> Path:
    """The manifest a snapshot of ``root`` would carry, written with manifest_line()."""
    with open(out, "w", encoding="utf-8") as fh:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            data = path.read_bytes()
            fh.write(manifest_line(path.relative_to(root).as_posix(), len(data),
                                   hashlib.sha256(data).hexdigest()))
    return out


def _load(root: Path, rel: str) -> Any:
    return json.loads((root / rel).read_text(encoding="utf-8"))


def _save(root: Path, rel: str, doc: Any) -> None:
    (root / rel).write_text(dumps(doc), encoding="utf-8")


def _user_with_app(root: Path) -> tuple[str, str]:
    """(user id, application id) of a user owning an application."""
    for entry in _load(root, "users/_index.json"):
        apps = _load(root, f"users/{entry['id']}.json")["applications"]
        if apps:
            return entry["id"], apps[0]["id"]
    raise AssertionError("the generated volume has no user with an application")


def _only_problem(findings: Findings, *needles: str) -> str:
    """The one problem found, which must contain every needle."""
    assert len(findings.problems) == 1, findings.problems
    problem = findings.problems[0]
    for needle in needles:
        assert needle in problem, problem
    return problem


# --- a sound volume ------------------------------------------------------------------------


def test_generated_volume_passes_with_its_manifest(volume: Path, tmp_path: Path) -> None:
    """Every file is checked and matches; generate()'s untidiness gives warnings only."""
    findings = check_volume(volume, _manifest(volume, tmp_path / "m.jsonl"))
    files = sum(1 for p in volume.rglob("*") if p.is_file())
    assert findings.ok and findings.problems == []
    assert findings.files_checked == files
    assert any("orphaned" in w and w.startswith("subscriptions/deleted-app-")
               for w in findings.warnings), findings.warnings
    assert any("stale" in w and w.startswith("subscription_index/")
               for w in findings.warnings), findings.warnings
    assert findings.to_json()["ok"] is True


def test_tidy_volume_has_no_warnings(tmp_path: Path) -> None:
    """Warnings come from untidiness only: a tidy volume has none."""
    root = tmp_path / "tidy"
    generate(root, 40, seed=2, untidy=False)
    findings = check_volume(root, None)
    assert (findings.problems, findings.warnings) == ([], [])


def test_manifest_line_is_one_json_line() -> None:
    """manifest_line writes one line the reader takes back, odd names escaped to ASCII."""
    line = manifest_line("users/ü 1.json", 12, "a" * 64)
    assert line.endswith("\n") and line.count("\n") == 1 and line.isascii()
    assert json.loads(line) == {"path": "users/ü 1.json", "size": 12, "sha256": "a" * 64}


# --- the manifest --------------------------------------------------------------------------


def test_changed_byte_same_size_is_a_hash_problem(volume: Path, tmp_path: Path) -> None:
    manifest = _manifest(volume, tmp_path / "m.jsonl")
    path = volume / "meta.json"
    data = bytearray(path.read_bytes())
    data[data.index(b"0.12.3")] = ord("1")  # "1.12.3": still valid JSON, same size
    path.write_bytes(bytes(data))
    _only_problem(check_volume(volume, manifest), "meta.json", "SHA-256")


def test_missing_and_extra_files_are_problems(volume: Path, tmp_path: Path) -> None:
    manifest = _manifest(volume, tmp_path / "m.jsonl")
    (volume / "webhooks" / "chatbot.json").unlink()
    (volume / "webhooks" / "extra.json").write_text("[]", encoding="utf-8")
    problems = check_volume(volume, manifest).problems
    assert "webhooks/chatbot.json: listed in the manifest, missing" in problems
    assert "webhooks/extra.json: not in the manifest" in problems
    assert len(problems) == 2, problems


def test_size_difference_is_named(volume: Path, tmp_path: Path) -> None:
    manifest = _manifest(volume, tmp_path / "m.jsonl")
    _save(volume, "webhooks/mailer.json", [])
    _only_problem(check_volume(volume, manifest), "webhooks/mailer.json", "size 2")


def test_malformed_manifest_is_a_usage_error(volume: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(manifest_line("../etc/passwd", 1, "0" * 64), encoding="utf-8")
    with pytest.raises(verify_data.VolumeUsageError, match="line 1"):
        check_volume(volume, bad)
    with pytest.raises(verify_data.VolumeUsageError, match="cannot read manifest"):
        check_volume(volume, tmp_path / "absent.jsonl")


# --- wicked's data model -------------------------------------------------------------------


def test_broken_json_is_a_problem_naming_the_file(volume: Path) -> None:
    user_id, _ = _user_with_app(volume)
    rel = f"users/{user_id}.json"
    (volume / rel).write_bytes((volume / rel).read_bytes()[:-5])
    # Reported once: the index entry and the owner links to it are not reported again.
    _only_problem(check_volume(volume, None), rel, "not valid JSON")


def test_user_index_pointing_to_a_missing_user(volume: Path) -> None:
    index = _load(volume, "users/_index.json")
    index.append({"id": "f" * 40, "email": "ghost@example.com"})
    _save(volume, "users/_index.json", index)
    _only_problem(check_volume(volume, None), "users/_index.json", "f" * 40, "does not exist")


def test_user_file_missing_from_the_index(volume: Path) -> None:
    user_id, _ = _user_with_app(volume)
    _save(volume, "users/_index.json",
          [e for e in _load(volume, "users/_index.json") if e["id"] != user_id])
    _only_problem(check_volume(volume, None), f"users/{user_id}.json",
                  "not in users/_index.json")


def test_owner_missing_from_users_application_list(volume: Path) -> None:
    user_id, app_id = _user_with_app(volume)
    doc = _load(volume, f"users/{user_id}.json")
    doc["applications"] = [a for a in doc["applications"] if a["id"] != app_id]
    _save(volume, f"users/{user_id}.json", doc)
    _only_problem(check_volume(volume, None), f"users/{user_id}.json", app_id)


def test_user_lists_an_application_it_does_not_own(volume: Path) -> None:
    user_id, app_id = _user_with_app(volume)
    doc = _load(volume, f"applications/{app_id}.json")
    doc["owners"] = [o for o in doc["owners"] if o["userId"] != user_id]
    _save(volume, f"applications/{app_id}.json", doc)
    _only_problem(check_volume(volume, None), f"users/{user_id}.json", app_id,
                  "owners do not include")


def test_application_without_subscriptions_file(volume: Path) -> None:
    _, app_id = _user_with_app(volume)
    (volume / "subscriptions" / f"{app_id}.subs.json").unlink()
    _only_problem(check_volume(volume, None), f"subscriptions/{app_id}.subs.json", "missing")


def test_approval_pointing_at_a_missing_subscription(volume: Path) -> None:
    approvals = _load(volume, "approvals/_index.json")
    assert approvals, "the generated volume has no approvals: pick another seed"
    approvals[0]["subscriptionId"] = "0" * 40
    _save(volume, "approvals/_index.json", approvals)
    _only_problem(check_volume(volume, None), "approvals/_index.json", approvals[0]["id"],
                  "0" * 40)


def test_stale_subscription_index_entry_is_a_warning_only(volume: Path) -> None:
    _, app_id = _user_with_app(volume)
    _save(volume, f"subscription_index/{'c' * 40}.json", {"application": app_id, "api": "x"})
    findings = check_volume(volume, None)
    assert findings.ok, findings.problems
    assert any(w.startswith(f"subscription_index/{'c' * 40}.json: stale")
               for w in findings.warnings), findings.warnings
    assert verify_data.main([str(volume)]) == 0


# --- as a program ---------------------------------------------------------------------------


def _checker(*args: str) -> subprocess.CompletedProcess[str]:
    """The checker file alone under ``python -I``: no site, no wicked_dr on the path."""
    return subprocess.run([sys.executable, "-I", str(CHECKER), *args], capture_output=True,
                          text=True, timeout=120, check=False)


def test_isolated_interpreter_exit_codes_and_json(volume: Path, tmp_path: Path) -> None:
    """Runs with nothing but the standard library: 0 when sound, 3 with problems (the JSON
    object names them), 2 with one stderr line on a bad ROOT."""
    manifest = _manifest(volume, tmp_path / "m.jsonl")
    sound = _checker(str(volume), "--manifest", str(manifest), "--json")
    assert sound.returncode == 0, sound.stderr
    report = json.loads(sound.stdout)
    assert report["ok"] is True and report["problems"] == [] and report["warnings"]
    assert set(report) == {"ok", "files_checked", "problems", "warnings", "duration_s"}

    (volume / "webhooks" / "mailer.json").write_text("[", encoding="utf-8")
    damaged = _checker(str(volume), "--manifest", str(manifest), "--json")
    assert damaged.returncode == 3
    problems = json.loads(damaged.stdout)["problems"]
    assert any(p.startswith("webhooks/mailer.json: size") for p in problems), problems
    assert any(p.startswith("webhooks/mailer.json: not valid JSON") for p in problems)

    human = _checker(str(volume))
    assert human.returncode == 3 and "problem: webhooks/mailer.json" in human.stdout

    bad = _checker(str(tmp_path / "absent"))
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and "not a directory" in bad.stderr


# --- wicked-dr verify-data ------------------------------------------------------------------


def test_cli_verify_data_without_config(volume: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """No configuration file anywhere: a sound directory exits 0, a damaged one exits 3
    with the report on stdout and one error line on stderr."""
    monkeypatch.setenv("WICKED_DR_CONFIG", str(tmp_path / "no-such-config.yaml"))
    manifest = _manifest(volume, tmp_path / "m.jsonl")
    assert main(["verify-data", str(volume), "--manifest", str(manifest), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["files_checked"] > 0

    (volume / "users" / "_index.json").write_text("{", encoding="utf-8")
    assert main(["verify-data", str(volume)]) == ExitCode.INTEGRITY == 3
    out, err = capsys.readouterr()
    assert "problem: users/_index.json: not valid JSON" in out
    assert err.startswith("wicked-dr: error: verify-data found 1 problem(s)")

    assert main(["verify-data", str(volume), "--json"]) == 3
    assert json.loads(capsys.readouterr().out)["ok"] is False

    assert main(["verify-data", str(tmp_path / "absent")]) == ExitCode.USAGE
