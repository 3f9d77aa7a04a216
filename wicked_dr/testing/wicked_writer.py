"""A concurrent writer that touches the dynamic data folder the way portal-api does.

Run it in its own process while a backup reads the folder::

    python -m wicked_dr.testing.wicked_writer ROOT --seconds 10 --respect-locks

Each thread owns a few files and rewrites them in place again and again, like node's
``writeFileSync`` on a large buffer: open with truncation, write a chunk, sleep a few ms, write
the next chunk. A reader that opens the file meanwhile sees a truncated document. With
``--respect-locks`` it follows wicked's lock protocol: back off while ``global.lock`` exists,
create ``<file>.lock`` with O_EXCL (back off if it exists), write, remove ``<file>.lock``.

Every document it writes carries a ``_writer`` marker (generation, padding to tens of KB, and a
SHA-256 over the rest), so ``is_torn`` can tell a whole file from a truncated or mixed one.
With ``--log PATH`` every version is also logged (``<sequence> <file> <sha256>``) once its
``<file>.lock`` is held and before a byte of it is written: ``read_log`` and
``one_instant_problem`` then tell whether a set of files is the folder as it stood at one
instant. With ``--rename`` a version is written to a temporary file beside the target and
renamed over it (a new inode), instead of rewritten in place.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

MARKER = "_writer"
GLOBAL_LOCK = "global.lock"
DEFAULT_FILES = ("meta.json", "webhooks/mailer.json", "webhooks/chatbot.json",
                 "webhooks/kong-adapter.json")
DEFAULT_USERS = 4


def _dumps(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


def _digest(generation: int, padding: str, body: Any) -> str:
    return hashlib.sha256(f"{generation}:{padding}:{_dumps(body)}".encode()).hexdigest()


def _split_marker(doc: Any) -> tuple[Any, dict[str, Any] | None]:
    """The document without its marker, and the marker (None when there is none)."""
    if isinstance(doc, dict) and isinstance(doc.get(MARKER), dict):
        body = {k: v for k, v in doc.items() if k != MARKER}
        return body, doc[MARKER]
    if (isinstance(doc, list) and doc and isinstance(doc[-1], dict)
            and isinstance(doc[-1].get(MARKER), dict)):
        # Arrays (webhook event queues) carry the marker in a trailing probe event.
        return doc[:-1], doc[-1][MARKER]
    return doc, None


def with_marker(body: Any, generation: int, padding: str) -> Any:
    """``body`` with a marker that makes the whole document self-validating."""
    marker = {"generation": generation, "padding": padding,
              "sha256": _digest(generation, padding, body)}
    if isinstance(body, dict):
        return {**body, MARKER: marker}
    if isinstance(body, list):
        probe = {"id": f"writer-probe-{generation}", "action": "update", "entity": "probe",
                 "data": {}, "utc": 0, MARKER: marker}
        return [*body, probe]
    raise TypeError(f"cannot mark a JSON {type(body).__name__}")


def is_torn(data: bytes) -> bool:
    """True when ``data`` is not a whole document: truncated, invalid JSON or mixed generations.

    A valid JSON document without a marker (never touched by the writer) is whole.
    """
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return True
    body, marker = _split_marker(doc)
    if marker is None:
        return False
    try:
        return bool(_digest(int(marker["generation"]), str(marker["padding"]), body)
                    != marker["sha256"])
    except (KeyError, TypeError, ValueError):
        return True


@dataclass
class Settings:
    """How the writer behaves; defaults make torn reads likely without the lock."""

    respect_locks: bool = True
    chunks: int = 8
    chunk_sleep_s: float = 0.003
    pause_s: float = 0.002
    size_bytes: int = 40_000
    backoff_s: float = 0.02
    rename: bool = False
    log: Path | None = None


Version = tuple[int, str, str]  # sequence, file, sha256 of the content


def read_log(path: Path) -> list[Version]:
    """The versions a writer logged, in the order it took them."""
    versions = []
    for line in path.read_text().splitlines():
        sequence, rel, sha = line.split(" ")
        versions.append((int(sequence), rel, sha))
    return versions


def one_instant_problem(files: dict[str, bytes], originals: dict[str, bytes],
                        versions: list[Version]) -> str | None:
    """None when ``files`` (a snapshot's copy of the writer's files) is the folder as it
    stood at one instant: each file a version the writer wrote (or its original), and, with
    ``k`` the latest of them, each file's version the last one written at or before ``k``.
    A write logged at or before ``k`` had finished by then: it held its ``<file>.lock``
    before ``k``'s was taken, and a consistent reader waited for every lock it saw."""
    position: dict[tuple[str, str], int] = {}
    for rel, data in originals.items():
        position[(rel, hashlib.sha256(data).hexdigest())] = 0
    for sequence, rel, sha in versions:
        position[(rel, sha)] = sequence
    found: dict[str, int] = {}
    for rel, data in files.items():
        at = position.get((rel, hashlib.sha256(data).hexdigest()))
        if at is None:
            return f"{rel} holds content the writer never wrote"
        found[rel] = at
    k = max(found.values(), default=0)
    last = {rel: 0 for rel in files}
    for sequence, rel, _ in versions:
        if sequence <= k and rel in last:
            last[rel] = max(last[rel], sequence)
    stale = sorted(rel for rel in files if found[rel] != last[rel])
    if stale:
        return (f"{stale[0]} is version {found[stale[0]]} while version {last[stale[0]]} was "
                f"written before {k}, which another file holds: no single instant")
    return None


@dataclass
class Counters:
    """What the writer did; printed as JSON when it stops."""

    writes: int = 0
    backoffs_global: int = 0
    backoffs_file: int = 0


class Writer:
    """Rewrites a set of files in chunks until told to stop."""

    def __init__(self, root: Path, files: list[str], settings: Settings, seed: int) -> None:
        self.root = root
        self.settings = settings
        self.stop = threading.Event()
        self.counters = Counters()
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._bodies = {rel: self._base(rel) for rel in files}
        self._generation = int(time.time() * 1000) % 10**9
        self._sequence = 0
        self._log = (open(settings.log, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
                     if settings.log else None)

    @property
    def files(self) -> list[str]:
        return list(self._bodies)

    def _base(self, rel: str) -> Any:
        body, _ = _split_marker(json.loads((self.root / rel).read_bytes()))
        return body

    def _next(self, rel: str) -> bytes:
        with self._lock:
            self._generation += 1
            generation = self._generation
            padding = self._rng.getrandbits(self.settings.size_bytes * 4).to_bytes(
                self.settings.size_bytes // 2, "big").hex()
        return _dumps(with_marker(self._bodies[rel], generation, padding)).encode()

    def _count(self, name: str) -> None:
        with self._lock:
            setattr(self.counters, name, getattr(self.counters, name) + 1)

    def _backoff(self, name: str) -> None:
        self._count(name)
        self.stop.wait(self.settings.backoff_s * (0.5 + random.random()))

    def _acquire(self, rel: str) -> str | None:
        """wicked's lock protocol; the file-lock path on success, None to back off."""
        if (self.root / GLOBAL_LOCK).exists():
            self._backoff("backoffs_global")
            return None
        lock = str(self.root / f"{rel}.lock")
        try:
            os.close(os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except FileExistsError:
            self._backoff("backoffs_file")
            return None
        # A second look closes the gap between our check and our create regardless of
        # scheduling delays: a reader that created global.lock in that gap will see our
        # file lock and wait; if we see its global.lock we step back instead.
        if (self.root / GLOBAL_LOCK).exists():
            os.unlink(lock)
            self._backoff("backoffs_global")
            return None
        return lock

    def _note(self, rel: str, data: bytes) -> None:
        """Log the version about to be written (its file lock is held)."""
        if self._log is None:
            return
        with self._lock:
            self._sequence += 1
            self._log.write(f"{self._sequence} {rel} {hashlib.sha256(data).hexdigest()}\n")

    def _write(self, rel: str, data: bytes) -> None:
        if not self.settings.rename:
            self._write_chunked(self.root / rel, data)
            return
        temporary = self.root / f"{rel}.tmp-{threading.get_ident()}"
        self._write_chunked(temporary, data)
        os.replace(temporary, self.root / rel)

    def _write_chunked(self, path: Path, data: bytes) -> None:
        # Truncate and rewrite the same inode in several writes, like writeFileSync.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            step = max(1, -(-len(data) // self.settings.chunks))
            for start in range(0, len(data), step):
                if start:
                    time.sleep(self.settings.chunk_sleep_s)
                view = memoryview(data)[start:start + step]
                while view:
                    view = view[os.write(fd, view):]
        finally:
            os.close(fd)

    def write_once(self, rel: str) -> bool:
        """One rewrite of ``rel``; False when the lock protocol told us to back off."""
        lock = self._acquire(rel) if self.settings.respect_locks else None
        if self.settings.respect_locks and lock is None:
            return False
        try:
            data = self._next(rel)
            self._note(rel, data)
            self._write(rel, data)
            self._count("writes")
        finally:
            if lock is not None:
                os.unlink(lock)
        return True

    def run_thread(self, files: list[str]) -> None:
        while not self.stop.is_set():
            for rel in files:
                if self.stop.is_set():
                    return
                self.write_once(rel)
                time.sleep(self.settings.pause_s)

    def run(self, seconds: float, threads: int) -> Counters:
        files = self.files
        workers = [threading.Thread(target=self.run_thread, args=(files[i::threads],),
                                    daemon=True)
                   for i in range(min(threads, len(files)))]
        for worker in workers:
            worker.start()
        self.stop.wait(seconds)
        self.stop.set()
        for worker in workers:
            worker.join()
        return self.counters


def default_files(root: Path, users: int = DEFAULT_USERS) -> list[str]:
    """meta.json, the webhook queues and the first few user files that exist under ``root``."""
    files = [rel for rel in DEFAULT_FILES if (root / rel).is_file()]
    user_dir = root / "users"
    if user_dir.is_dir():
        names = sorted(n for n in os.listdir(user_dir)
                       if n.endswith(".json") and not n.startswith("_"))
        files.extend(f"users/{n}" for n in names[:users])
    return files


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="wicked_writer", description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--seconds", type=float, default=10.0)
    locks = parser.add_mutually_exclusive_group()
    locks.add_argument("--respect-locks", dest="respect_locks", action="store_true",
                       default=True)
    locks.add_argument("--ignore-locks", dest="respect_locks", action="store_false")
    parser.add_argument("--files", nargs="*", help="relative paths (default: meta.json, "
                        "webhook queues, a few users)")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--chunk-sleep-ms", type=float, default=3.0)
    parser.add_argument("--size-kb", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rename", action="store_true",
                        help="write a temporary file and rename it over the target")
    parser.add_argument("--log", type=Path, help="log every version written to this file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    settings = Settings(respect_locks=args.respect_locks, chunks=args.chunks,
                        chunk_sleep_s=args.chunk_sleep_ms / 1000,
                        size_bytes=args.size_kb * 1000, rename=args.rename, log=args.log)
    writer = Writer(args.root, args.files or default_files(args.root), settings, args.seed)
    # SIGTERM ends the run between writes, so a stopped writer never leaves a torn file.
    signal.signal(signal.SIGTERM, lambda *_: writer.stop.set())
    signal.signal(signal.SIGINT, lambda *_: writer.stop.set())
    print(json.dumps({"ready": True, "files": writer.files}), flush=True)
    counters = writer.run(args.seconds, args.threads)
    print(json.dumps(asdict(counters)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
