"""Stand-in of wicked's portal-api for the integration tests (standard library only).

It honours the part of portal-api's contract that wicked-dr relies on, with real process,
file and socket behaviour; it is NOT portal-api (no users/applications API, no webhooks, no
meta.json rewriting). env:

* ``PORT`` (3001): listens on 127.0.0.1 only;
* ``DYNAMIC`` (/var/portal-api/dynamic): the dynamic data folder;
* ``STATE`` (/standin-state): a host directory where the records go;
* ``CHECKER`` (/standin/verify_data.py): wicked-dr's ``verify_data.py``, imported by path.

At start, like portal-api: it is a singleton (an exclusive ``flock`` on
``$STATE/portal-api.instance`` held for the process's life, and the port; a second instance
records ``refused`` and exits 3), deletes every ``*.lock`` under DYNAMIC (``global.lock``
included; entries whose name starts with ``.`` are skipped, as wicked-dr keeps its reserved
``.wicked-dr-*`` names there) and validates the data with the checker. The test knob
``$STATE/unhealthy-if`` (a path relative to DYNAMIC) makes the instance invalid when that
path exists. Records ``start`` with ``meta_sha256`` and the ``users`` index's length.

HTTP: ``GET /ping`` -> 200 ``{"message": "OK", "version": "stand-in"}`` when the data was
valid at start, else 503 ``{"message": "invalid dynamic data: <first problem>"}`` for the
whole life of the process. ``GET /standin/subscriptions`` -> every subscription object of
``subscriptions/*.subs.json`` as one JSON list (the real portal-api serves subscriptions
per application and per API with paging and auth; the Kong Adapter stand-in needs only
this). SIGTERM records ``stop`` and exits 0 at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _records import (  # type: ignore[import-not-found]
    STATE,
    record,
    send_json,
    stop_on_sigterm,
)

COMPONENT = "portal-api"
PORT = int(os.environ.get("PORT", "3001"))
DYNAMIC = Path(os.environ.get("DYNAMIC", "/var/portal-api/dynamic"))
CHECKER = os.environ.get("CHECKER", "/standin/verify_data.py")
EXIT_REFUSED = 3


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _users() -> int | None:
    try:
        index = json.loads((DYNAMIC / "users" / "_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return len(index) if isinstance(index, list) else None


def _delete_locks(directory: Path) -> list[str]:
    """Delete ``*.lock`` files below ``directory``, skipping dot-entries; their paths."""
    deleted: list[str] = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return deleted
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir(follow_symlinks=False):
            deleted += _delete_locks(Path(entry.path))
        elif entry.name.endswith(".lock"):
            os.unlink(entry.path)
            deleted.append(str(Path(entry.path).relative_to(DYNAMIC)))
    return deleted


def _first_problem() -> str | None:
    """The checker's first problem, or the knob's, or None when the data is valid."""
    spec = importlib.util.spec_from_file_location("verify_data", CHECKER)
    if spec is None or spec.loader is None:
        return f"cannot load the checker {CHECKER}"
    checker = importlib.util.module_from_spec(spec)
    sys.modules["verify_data"] = checker  # dataclasses look their module up
    spec.loader.exec_module(checker)
    try:
        findings = checker.check_volume(DYNAMIC)
    except checker.VolumeUsageError as exc:
        return str(exc)
    if findings.problems:
        return str(findings.problems[0])
    knob = STATE / "unhealthy-if"
    if knob.exists():
        rel = knob.read_text(encoding="utf-8").strip()
        if rel and (DYNAMIC / rel).exists():
            return f"{rel}: present (unhealthy-if knob)"
    return None


def _subscriptions() -> list[Any]:
    subs: list[Any] = []
    for path in sorted((DYNAMIC / "subscriptions").glob("*.subs.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(doc, list):
            subs.extend(doc)
    return subs


def _handler(problem: str | None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: Any) -> None:
            send_json(self, status, body)

        def do_GET(self) -> None:
            if self.path == "/ping":
                if problem is None:
                    self._send(200, {"message": "OK", "version": "stand-in"})
                else:
                    self._send(503, {"message": f"invalid dynamic data: {problem}"})
            elif self.path == "/standin/subscriptions":
                try:
                    self._send(200, _subscriptions())
                except (OSError, ValueError) as exc:
                    self._send(500, {"message": f"cannot read subscriptions: {exc}"})
            else:
                self._send(404, {"message": "not found"})

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def main() -> int:
    stop_on_sigterm(COMPONENT)
    instance = open(STATE / f"{COMPONENT}.instance", "a")  # noqa: SIM115 - held for life
    try:
        fcntl.flock(instance, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        record(COMPONENT, "refused", reason="another instance holds the instance lock")
        print("stand-in portal-api: another instance is running; refusing", flush=True)
        return EXIT_REFUSED
    try:
        server = ThreadingHTTPServer(("127.0.0.1", PORT), _handler(None))
    except OSError as exc:
        record(COMPONENT, "refused", reason=f"cannot bind 127.0.0.1:{PORT}: {exc}")
        return EXIT_REFUSED
    record(COMPONENT, "start", meta_sha256=_sha256(DYNAMIC / "meta.json"), users=_users())
    locks = _delete_locks(DYNAMIC)
    problem = _first_problem()
    record(COMPONENT, "validated", ok=problem is None, problem=problem, locks_deleted=locks)
    print(f"stand-in portal-api on 127.0.0.1:{PORT}; problem: {problem}", flush=True)
    server.RequestHandlerClass = _handler(problem)
    server.daemon_threads = True
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
