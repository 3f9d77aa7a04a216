"""Scanning one batch of a directory's entries: ``lstat``, and read and hash what is needed.

``scan_batch`` is the whole job. The volume source runs it in worker processes
(``python -m wicked_dr.sources.scan_worker``), which is why this module imports only the
standard library: a worker is up within tens of milliseconds, while the main process lists
the first directory. Per file the work is three or four system calls and a SHA-256, which
Python cannot run on two cores in one process; worker processes can.

Wire protocol (stdin to stdout, in order): frames of a 4-byte big-endian length and a pickle.
A job is ``(directory, names, keys)``; the answer is ``scan_batch``'s list. End of input ends
the worker.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import signal
import stat
import struct
import sys
from typing import IO

# A file this large (or one that grew past its stat size) is left to the main process, which
# streams it in chunks: a result frame must stay small.
INLINE_MAX = 1 << 20
# Inline content per batch; past it, files are left to the main process as well.
BATCH_BYTES = 8 << 20
FRAME = struct.Struct(">I")

# (st_mode, st_uid, st_gid, st_size, st_mtime_ns, st_ctime_ns, st_ino)
Meta = tuple[int, int, int, int, int, int, int]
# (st_size, st_mtime_ns, st_ctime_ns, st_ino): the stat cache's identity of an unchanged file
Key = tuple[int, int, int, int]
# ("d", name, meta) directory   ("l", name, meta, target) symlink
# ("u", name, meta) regular file whose stat matches its key: unchanged, not read
# ("f", name, meta, content, sha256) regular file read here
# ("b", name, meta) regular file for the main process to read
# ("e", name, message) could not be read
Result = tuple[object, ...]


def scan_batch(directory: str, names: list[str], keys: list[Key | None]) -> list[Result]:
    """Scan ``names`` (entries of ``directory``); ``keys[i]`` vouches for an unchanged file."""
    results: list[Result] = []
    budget = BATCH_BYTES
    for name, key in zip(names, keys, strict=True):
        result = _scan_one(f"{directory}/{name}", name, key, budget)
        if result[0] == "f":
            budget -= len(result[3])  # type: ignore[arg-type]
        results.append(result)
    return results


def _scan_one(path: str, name: str, key: Key | None, budget: int) -> Result:
    try:
        st = os.lstat(path)
    except OSError as exc:
        return ("e", name, _message(exc))
    meta = (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
            st.st_ino)
    if stat.S_ISREG(st.st_mode):
        if key is not None and key == (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino):
            return ("u", name, meta)
        if st.st_size > min(INLINE_MAX, budget):
            return ("b", name, meta)
        return _read_small(path, name, meta)
    if stat.S_ISDIR(st.st_mode):
        return ("d", name, meta)
    if stat.S_ISLNK(st.st_mode):
        try:
            return ("l", name, meta, os.readlink(path))
        except OSError as exc:
            return ("e", name, _message(exc))
    return ("e", name, "not a regular file, directory or symlink; skipped")


def _read_small(path: str, name: str, meta: Meta) -> Result:
    size = meta[3]
    try:
        # O_NOFOLLOW: never read through a symlink swapped in after the lstat.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            # One byte more than stat said, so a file that grew meanwhile is noticed.
            content = os.read(fd, size + 1)
        finally:
            os.close(fd)
    except OSError as exc:
        return ("e", name, _message(exc))
    if len(content) > size:
        return ("b", name, meta)
    return ("f", name, meta, content, hashlib.sha256(content).hexdigest())


def _message(exc: OSError) -> str:
    return exc.strerror or str(exc)


def read_frame(stream: IO[bytes]) -> bytes | None:
    """One frame's payload, or None at a clean end of input."""
    header = stream.read(FRAME.size)
    if not header:
        return None
    if len(header) < FRAME.size:
        raise EOFError("truncated frame header")
    (length,) = FRAME.unpack(header)
    payload = stream.read(length)
    if len(payload) < length:
        raise EOFError("truncated frame")
    return payload


def write_frame(stream: IO[bytes], payload: bytes) -> None:
    stream.write(FRAME.pack(len(payload)))
    stream.write(payload)
    stream.flush()


def serve(jobs: IO[bytes], answers: IO[bytes]) -> None:
    """Answer jobs until end of input."""
    while (payload := read_frame(jobs)) is not None:
        directory, names, keys = pickle.loads(payload)  # from our parent only
        write_frame(answers, pickle.dumps(scan_batch(directory, names, keys), protocol=5))


def main() -> None:
    # Ctrl-C reaches the whole process group; the parent decides, and closes our input.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A broken pipe or a cut frame: the parent is gone, nobody waits for an answer.
    with contextlib.suppress(BrokenPipeError, EOFError):
        serve(sys.stdin.buffer, sys.stdout.buffer)


if __name__ == "__main__":
    main()
