"""Check a restored wicked dynamic-data directory (standard library only).

Usage: ``python3 verify_data.py ROOT [--manifest FILE] [--json]``.

Standard library only, and nothing from wicked_dr: this one file is copied into a scratch
volume and run there by whatever image has ``python3`` (``python3 -I`` works), so the check
runs where the restored data lives, with the same interpreter-free assumptions as a drill.

What it checks
  1. With ``--manifest FILE``: the files are exactly the snapshot's. The manifest is JSON
     lines, one per regular file of the snapshot::

         {"path": "users/u1.json", "size": 12, "sha256": "<64 lower-case hex digits>"}

     ``path`` is relative to ROOT, ``/``-separated, without ``.``/``..`` parts; blank lines
     are ignored; ``manifest_line()`` writes one line. Every listed path must be a regular
     file with that size and SHA-256; a regular file under ROOT that is not listed is a
     problem too.
  2. wicked's data model, read from the files themselves (wicked-facts.md, "The dynamic data
     volume"): every ``*.json`` parses; ``users/_index.json`` <-> ``users/<id>.json``;
     ``applications/<id>.json`` owners <-> the owners' ``applications`` lists;
     ``applications/_index.json`` <-> ``applications/<id>.json`` <->
     ``subscriptions/<id>.subs.json``; approvals point to existing subscriptions.

Problems (exit 3) are what a restored portal-api would trip over: a file missing, changed or
extra against the manifest; a JSON file that does not parse or has the wrong shape;
``meta.json``, ``users/_index.json``, ``applications/_index.json`` or
``approvals/_index.json`` missing; an index entry without its file or a file without its
index entry; a file whose ``id`` differs from its name; an owner without a user file; an
owner/user application list mismatch; an application without its subscriptions file; a
subscription whose ``application`` is not its file's; an approval of an unknown subscription.

Warnings (exit 0) are wicked's normal untidiness (portal-api tolerates or rebuilds it):
stale or missing ``subscription_index/`` and ``subscription_api_index/`` entries (rebuilt at
every start), orphaned ``subscriptions/<appId>.subs.json`` of deleted applications and
approvals of their subscriptions, leftover ``*.lock`` files (deleted at start), other
non-JSON files, and entries that are not regular files (skipped).

Output: one line per problem or warning, naming the file (relative path) first; with
``--json`` one object ``{"ok", "files_checked", "problems", "warnings", "duration_s"}``.
Exit 0 without problems, 3 with problems, 2 on usage errors (ROOT not a directory, manifest
unreadable or malformed) with one line on stderr.

Runs on Python 3.7 or newer. Each file is read once, in 1 MiB chunks: the chunks are
hashed, and a ``*.json`` file's bytes parsed from the same read (files beyond
``PARSE_LIMIT`` are hashed only). Only the ids the cross-checks need are kept, so memory
does not grow with the documents. Measured: a
20 000-user volume (``bench/gen_volume.py --users 20000 --seed 1``: 96 408 files, 54 MB) is
checked against its manifest in 4 to 5 s (Python 3.11, 2 CPUs, warm page cache, 88 MB RSS).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

CHUNK = 1 << 20
PARSE_LIMIT = 1 << 30  # a *.json file larger than this is hashed, not parsed
EXIT_OK, EXIT_USAGE, EXIT_PROBLEMS = 0, 2, 3
REQUIRED = ("meta.json", "users/_index.json", "applications/_index.json",
            "approvals/_index.json")
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")


class VolumeUsageError(Exception):
    """ROOT or the manifest cannot be used: nothing was checked (exit 2)."""


@dataclass
class Findings:
    """What a check found; ``ok`` is derived, so it can never disagree with ``problems``."""

    files_checked: int = 0
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        """True when nothing but warnings was found."""
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        """The object ``--json`` prints."""
        return {"ok": self.ok, "files_checked": self.files_checked,
                "problems": list(self.problems), "warnings": list(self.warnings),
                "duration_s": self.duration_s}


# --- the manifest ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    """One manifest entry: what the file at its path must be."""

    size: int
    sha256: str


def manifest_line(path: str, size: int, sha256: str) -> str:
    """One manifest line, newline included (ASCII-only JSON: any file name survives)."""
    return json.dumps({"path": path, "size": size, "sha256": sha256},
                      separators=(",", ":")) + "\n"


def read_manifest(path: Path) -> dict[str, Expected]:
    """The manifest as ``{path: Expected}``; VolumeUsageError naming the line if malformed,
    because a check against a manifest we misread would prove nothing."""
    try:
        with open(path, encoding="utf-8") as fh:
            lines = list(fh)
    except (OSError, UnicodeDecodeError) as exc:
        raise VolumeUsageError(f"cannot read manifest {path}: {exc}") from None
    expected: dict[str, Expected] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        rel, entry = _manifest_entry(line)
        if rel is None or entry is None:
            raise VolumeUsageError(f"manifest {path} line {number}: not a "
                                   '{"path", "size", "sha256"} entry with a safe relative path')
        if rel in expected:
            raise VolumeUsageError(f"manifest {path} line {number}: {rel} listed twice")
        expected[rel] = entry
    return expected


def _manifest_entry(line: str) -> tuple[str | None, Expected | None]:
    """A manifest line's path and entry, or Nones when it is not one."""
    try:
        doc = json.loads(line)
    except ValueError:
        return None, None
    if not isinstance(doc, dict):
        return None, None
    rel, size, digest = doc.get("path"), doc.get("size"), doc.get("sha256")
    if (not isinstance(rel, str) or not _safe_rel(rel) or isinstance(size, bool)
            or not isinstance(size, int) or size < 0
            or not isinstance(digest, str) or not _HEX64.match(digest)):
        return None, None
    return rel, Expected(size, digest)


def _safe_rel(rel: str) -> bool:
    """A relative, normalised ``/`` path: nothing a manifest line could use to point outside."""
    parts = rel.split("/")
    return bool(rel) and all(p not in ("", ".", "..") for p in parts) and "\0" not in rel


# --- reading the tree ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Read:
    """One file read once: its size, hash and (for JSON within the limit) its bytes."""

    size: int
    sha256: str
    data: bytes | None


# Names wicked-dr reserves inside the volume (backup skips them too).
RESERVED_PREFIX = ".wicked-dr-"


def _walk(root: Path, findings: Findings) -> Iterator[tuple[str, os.DirEntry[str]]]:
    """Every non-directory entry under root as (relative path, entry), names sorted per
    directory; a directory that cannot be listed is a problem (its files are unchecked)."""
    stack = [("", str(root))]
    while stack:
        prefix, directory = stack.pop()
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            findings.problems.append(f"{prefix or './'}: cannot list directory: {exc.strerror}")
            continue
        for entry in entries:
            if entry.name.startswith(RESERVED_PREFIX):
                continue  # wicked-dr's own (a live restore's workspace): not wicked's data
            rel = prefix + entry.name
            if entry.is_dir(follow_symlinks=False):
                stack.append((rel + "/", entry.path))
            else:
                yield rel, entry


def _read(path: str, keep: bool) -> _Read:
    """Hash the file in chunks; keep its bytes only when asked and within PARSE_LIMIT."""
    digest = hashlib.sha256()
    parts: list[bytes] = []
    size = 0
    with open(path, "rb", buffering=0) as fh:  # unbuffered: no copy through a buffer
        for chunk in iter(lambda: fh.read(CHUNK), b""):  # no walrus: python3.7 images
            digest.update(chunk)
            size += len(chunk)
            if keep and size <= PARSE_LIMIT:
                parts.append(chunk)
    data = b"".join(parts) if keep and size <= PARSE_LIMIT else None
    return _Read(size, digest.hexdigest(), data)


# --- wicked's data model ---------------------------------------------------------------------


class _Shape(Exception):
    """A parsed document that is not what wicked writes there."""


@dataclass(frozen=True)
class _Sub:
    id: str
    api: str
    client_id: str | None


def _objects(doc: Any, what: str) -> list[dict[str, Any]]:
    if not isinstance(doc, list) or not all(isinstance(e, dict) for e in doc):
        raise _Shape(f"not a list of {what} objects")
    return doc


def _str(obj: dict[str, Any], key: str, what: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise _Shape(f"{what} without a string {key!r}")
    return value


def _doc_id(doc: Any, name: str, what: str) -> dict[str, Any]:
    """The document as a dict whose ``id`` is its file name (wicked finds it by that name)."""
    if not isinstance(doc, dict):
        raise _Shape(f"not a {what} object")
    doc_id = _str(doc, "id", what)
    if doc_id != name:
        raise _Shape(f"{what} id is {doc_id!r}, the file name says {name!r}")
    return doc


class _Model:
    """The ids the cross-checks need, gathered file by file. ``present`` holds every JSON
    path seen, parseable or not: a broken file is reported once, as broken, and never again
    as missing by the index or owner checks that point to it."""

    def __init__(self) -> None:
        self.present: set[str] = set()
        self.user_index: list[str] | None = None
        self.users: dict[str, list[str]] = {}  # user id -> application ids
        self.app_index: list[str] | None = None
        self.apps: dict[str, list[str]] = {}  # application id -> owner user ids
        self.subs: dict[str, list[_Sub]] = {}  # application id -> its subscriptions
        self.client_index: dict[str, str] = {}  # clientId -> application id
        self.api_index: dict[str, list[str]] = {}  # api id -> application ids
        self.approvals: list[tuple[str, str]] | None = None  # (approval id, subscription id)

    def take(self, rel: str, doc: Any) -> None:
        """Record what ``rel`` says; raise _Shape when it is not what wicked writes there."""
        folder, _, name = rel.partition("/")
        if "/" in name or not name.endswith(".json"):
            return
        stem = name[: -len(".json")]
        if rel == "users/_index.json":
            self._user_index(doc)
        elif folder == "users":
            self._user(stem, doc)
        elif rel == "applications/_index.json":
            self._app_index(doc)
        elif folder == "applications":
            self._app(stem, doc)
        elif folder == "subscriptions" and stem.endswith(".subs"):
            self._subs(stem[: -len(".subs")], doc)
        elif folder == "subscription_index":
            self.client_index[stem] = _str(_dict(doc), "application", "index entry")
        elif folder == "subscription_api_index":
            self.api_index[stem] = [_str(e, "application", "entry")
                                    for e in _objects(doc, "entry")]
        elif rel == "approvals/_index.json":
            self.approvals = [(_str(e, "id", "approval"), _str(e, "subscriptionId", "approval"))
                              for e in _objects(doc, "approval")]

    def _user_index(self, doc: Any) -> None:
        self.user_index = [_str(e, "id", "user entry") for e in _objects(doc, "user entry")]

    def _user(self, user_id: str, doc: Any) -> None:
        user = _doc_id(doc, user_id, "user")
        apps = user.get("applications", [])
        self.users[user_id] = [_str(a, "id", "application link")
                               for a in _objects(apps, "application link")]

    def _app_index(self, doc: Any) -> None:
        self.app_index = [_str(e, "id", "application entry")
                          for e in _objects(doc, "application entry")]

    def _app(self, app_id: str, doc: Any) -> None:
        app = _doc_id(doc, app_id, "application")
        self.apps[app_id] = [_str(o, "userId", "owner")
                             for o in _objects(app.get("owners", []), "owner")]

    def _subs(self, app_id: str, doc: Any) -> None:
        subs = []
        for entry in _objects(doc, "subscription"):
            owner = _str(entry, "application", "subscription")
            if owner != app_id:
                raise _Shape(f"subscription {entry.get('id')!r} belongs to application "
                             f"{owner!r}, the file name says {app_id!r}")
            client_id = entry.get("clientId")
            subs.append(_Sub(_str(entry, "id", "subscription"), str(entry.get("api")),
                             client_id if isinstance(client_id, str) else None))
        self.subs[app_id] = subs


def _dict(doc: Any) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise _Shape("not an object")
    return doc


# --- judging ---------------------------------------------------------------------------------


class _Judge:
    """The cross-checks over a gathered model, each a small method adding lines."""

    def __init__(self, model: _Model, findings: Findings) -> None:
        self.m = model
        self.problems = findings.problems
        self.warnings = findings.warnings
        # Computed once: the checks below ask it per subscription (20 k applications).
        self.known_apps = set(model.apps) | set(model.app_index or ())

    def run(self) -> None:
        for rel in REQUIRED:
            if rel not in self.m.present:
                self.problems.append(f"{rel}: missing")
        self.index_vs_files("users", self.m.user_index, self.m.users, "user")
        self.index_vs_files("applications", self.m.app_index, self.m.apps, "application")
        self.owners()
        self.user_app_lists()
        self.subscription_files()
        self.subscription_indexes()
        self.approvals()

    def _absent(self, rel: str) -> bool:
        """Not there at all (a file there but broken was reported as such already)."""
        return rel not in self.m.present

    def index_vs_files(self, folder: str, index: list[str] | None,
                       files: dict[str, Any], what: str) -> None:
        """Every index entry has its file and every file its entry: wicked lists from the
        index and reads by file, so either half alone is a hole in the portal."""
        if index is None:
            return
        seen: set[str] = set()
        for entry in index:
            if entry in seen:
                self.problems.append(f"{folder}/_index.json: {what} {entry} listed twice")
            seen.add(entry)
            if self._absent(f"{folder}/{entry}.json"):
                self.problems.append(f"{folder}/_index.json: lists {what} {entry}, but "
                                     f"{folder}/{entry}.json does not exist")
        for file_id in sorted(set(files) - seen):
            self.problems.append(f"{folder}/{file_id}.json: {what} not in {folder}/_index.json")

    def owners(self) -> None:
        """Each owner exists and lists the application back."""
        for app_id, owners in sorted(self.m.apps.items()):
            for user_id in owners:
                apps = self.m.users.get(user_id)
                if apps is None:
                    if self._absent(f"users/{user_id}.json"):
                        self.problems.append(f"applications/{app_id}.json: owner {user_id} "
                                             f"has no file users/{user_id}.json")
                elif app_id not in apps:
                    self.problems.append(f"users/{user_id}.json: does not list application "
                                         f"{app_id}, whose owners include this user")

    def user_app_lists(self) -> None:
        """Each application a user lists exists and names the user among its owners."""
        for user_id, apps in sorted(self.m.users.items()):
            for app_id in apps:
                owners = self.m.apps.get(app_id)
                if owners is None:
                    if self._absent(f"applications/{app_id}.json"):
                        self.problems.append(f"users/{user_id}.json: lists application "
                                             f"{app_id}, but applications/{app_id}.json "
                                             "does not exist")
                elif user_id not in owners:
                    self.problems.append(f"users/{user_id}.json: lists application {app_id}, "
                                         "whose owners do not include this user")

    def subscription_files(self) -> None:
        """Every application has its subscriptions file; one of a deleted application is the
        orphan wicked leaves behind (a warning)."""
        known = self.known_apps
        for app_id in sorted(known):
            if self._absent(f"subscriptions/{app_id}.subs.json"):
                self.problems.append(f"subscriptions/{app_id}.subs.json: missing for "
                                     f"application {app_id}")
        for app_id in sorted(set(self.m.subs) - known):
            self.warnings.append(f"subscriptions/{app_id}.subs.json: orphaned: application "
                                 f"{app_id} no longer exists (wicked leaves these behind)")

    def subscription_indexes(self) -> None:
        """subscription_index/ and subscription_api_index/ are rebuilt at every portal-api
        start: anything stale or missing there is a warning."""
        live = {app: subs for app, subs in self.m.subs.items() if app in self.known_apps}
        clients = {s.client_id: app for app, subs in live.items() for s in subs if s.client_id}
        for client_id, app_id in sorted(self.m.client_index.items()):
            if clients.get(client_id) != app_id:
                self.warnings.append(f"subscription_index/{client_id}.json: stale: application "
                                     f"{app_id} has no subscription with this clientId "
                                     "(rebuilt at portal-api start)")
        for client_id, app_id in sorted(clients.items()):
            if client_id not in self.m.client_index:
                self.warnings.append(f"subscriptions/{app_id}.subs.json: clientId {client_id} "
                                     "has no subscription_index entry (rebuilt at start)")
        pairs = {(s.api, app) for app, subs in live.items() for s in subs}
        for api_id, apps in sorted(self.m.api_index.items()):
            for app_id in apps:
                if (api_id, app_id) not in pairs:
                    self.warnings.append(f"subscription_api_index/{api_id}.json: stale: "
                                         f"application {app_id} has no subscription to "
                                         f"{api_id} (rebuilt at portal-api start)")

    def approvals(self) -> None:
        """An approval of a subscription nobody holds is a dangling task for the admins; one
        of an orphaned subscription file is left over from a deleted application."""
        if self.m.approvals is None:
            return
        known = self.known_apps
        live = {s.id for app, subs in self.m.subs.items() if app in known for s in subs}
        orphaned = {s.id for app, subs in self.m.subs.items() if app not in known for s in subs}
        for approval_id, sub_id in self.m.approvals:
            if sub_id in orphaned:
                self.warnings.append(f"approvals/_index.json: approval {approval_id} is for "
                                     f"subscription {sub_id} of a deleted application")
            elif sub_id not in live:
                self.problems.append(f"approvals/_index.json: approval {approval_id} points to "
                                     f"subscription {sub_id}, which no subscriptions file holds")


# --- the check -------------------------------------------------------------------------------


def check_volume(root: Path, manifest: Path | None = None) -> Findings:
    """Check the directory ``root`` (against ``manifest`` when given); VolumeUsageError when
    ``root`` is not a directory or the manifest cannot be read."""
    start = time.monotonic()
    if not root.is_dir():
        raise VolumeUsageError(f"{root} is not a directory")
    expected = read_manifest(manifest) if manifest is not None else None
    findings = Findings()
    model = _Model()
    for rel, entry in _walk(root, findings):
        _check_entry(rel, entry, expected, model, findings)
    if expected is not None:
        findings.problems.extend(f"{rel}: listed in the manifest, missing"
                                 for rel in sorted(expected))
    _Judge(model, findings).run()
    findings.duration_s = round(time.monotonic() - start, 3)
    return findings


def _check_entry(rel: str, entry: os.DirEntry[str], expected: dict[str, Expected] | None,
                 model: _Model, findings: Findings) -> None:
    """One entry: read once, compared with its manifest entry (popped, so what is left at
    the end is missing), parsed into the model."""
    want = expected.pop(rel, None) if expected is not None else None
    if not entry.is_file(follow_symlinks=False):
        line = f"{rel}: not a regular file"
        (findings.problems if want else findings.warnings).append(
            line + ("" if want else "; skipped"))
        return
    is_json = rel.endswith(".json")
    try:
        read = _read(entry.path, keep=is_json)
    except OSError as exc:
        findings.problems.append(f"{rel}: cannot read: {exc.strerror}")
        return
    findings.files_checked += 1
    if expected is not None:
        _compare(rel, read, want, findings)
    if is_json:
        _parse(rel, read, model, findings)
    elif rel.endswith(".lock"):
        findings.warnings.append(f"{rel}: leftover lock file (portal-api deletes it at start)")
    else:
        findings.warnings.append(f"{rel}: not a JSON file; not part of wicked's layout")


def _compare(rel: str, read: _Read, want: Expected | None, findings: Findings) -> None:
    if want is None:
        findings.problems.append(f"{rel}: not in the manifest")
    elif read.size != want.size:
        findings.problems.append(f"{rel}: size {read.size}, the manifest says {want.size}")
    elif read.sha256 != want.sha256:
        findings.problems.append(f"{rel}: SHA-256 differs from the manifest's (same size)")


def _parse(rel: str, read: _Read, model: _Model, findings: Findings) -> None:
    model.present.add(rel)
    if read.data is None:
        findings.warnings.append(f"{rel}: larger than {PARSE_LIMIT} bytes; hashed, not parsed")
        return
    try:
        doc = json.loads(read.data)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError alike
        findings.problems.append(f"{rel}: not valid JSON ({exc})")
        return
    try:
        model.take(rel, doc)
    except _Shape as exc:
        findings.problems.append(f"{rel}: {exc}")


# --- the command line ------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise VolumeUsageError(f"{message} (see --help)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="verify_data.py", description=__doc__.split("\n", 1)[0],
                     epilog="exit codes: 0 no problems (warnings allowed), 3 problems, "
                     "2 usage error")
    parser.add_argument("root", type=Path, metavar="ROOT", help="the restored dynamic data")
    parser.add_argument("--manifest", type=Path, metavar="FILE",
                        help="JSON lines {path, size, sha256}: the snapshot's regular files")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    return parser


def render(findings: Findings) -> str:
    """The human report: a summary line, then one line per problem and warning."""
    lines = [f"{findings.files_checked} files checked in {findings.duration_s} s: "
             f"{len(findings.problems)} problem(s), {len(findings.warnings)} warning(s)"]
    lines += [f"problem: {p}" for p in findings.problems]
    lines += [f"warning: {w}" for w in findings.warnings]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the check; the exit code says problems (3), usage errors (2) or none (0)."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")  # odd file names never crash output
    try:
        args = _parser().parse_args(argv)
        findings = check_volume(args.root, args.manifest)
    except VolumeUsageError as exc:
        print(f"verify_data: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(findings.to_json()) if args.json else render(findings))
    return EXIT_OK if findings.ok else EXIT_PROBLEMS


if __name__ == "__main__":
    sys.exit(main())
