"""A pool of scan worker processes whose answers come back in the order the jobs went out.

Job ``i`` goes to worker ``i % n`` and each worker answers in order, so reading answer ``i``
from worker ``i % n`` keeps the manifest order without sequence numbers. At most
``IN_FLIGHT_PER_WORKER`` jobs wait per worker, and a job frame is kept small (see
``volume.py``), so a job write never blocks on a full pipe while its worker blocks on an
answer nobody reads. With ``workers=0`` the jobs run in this process: the same code, no
processes (tests, and hosts with one CPU).
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO

from wicked_dr.errors import SourceError
from wicked_dr.log import get_logger
from wicked_dr.sources.scan_worker import Key, Result, read_frame, scan_batch, write_frame

log = get_logger(__name__)
IN_FLIGHT_PER_WORKER = 2
Job = tuple[list[str], list[Key | None]]


class ScanPool:
    """Runs ``scan_batch`` jobs, in worker processes when ``workers`` > 0."""

    def __init__(self, workers: int) -> None:
        self._workers: list[subprocess.Popen[bytes]] = []
        try:
            for _ in range(workers):
                self._workers.append(_start_worker())
        except OSError as exc:
            # Slower, never wrong: the same scan runs in this process.
            log.warning("scan workers could not start; scanning in the main process",
                        error=str(exc))
            self.close()

    def __enter__(self) -> ScanPool:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def map(self, directory: str, jobs: Iterable[Job]) -> Iterator[list[Result]]:
        """Answers to ``jobs`` (batches of one directory), in order; jobs are pulled lazily."""
        if not self._workers:
            for names, keys in jobs:
                yield scan_batch(directory, names, keys)
            return
        yield from self._map_parallel(directory, iter(jobs))

    def _map_parallel(self, directory: str, jobs: Iterator[Job]) -> Iterator[list[Result]]:
        window = IN_FLIGHT_PER_WORKER * len(self._workers)
        in_flight: deque[subprocess.Popen[bytes]] = deque()
        for sent, job in enumerate(jobs):
            if len(in_flight) == window:
                yield _answer(in_flight.popleft())
            worker = self._workers[sent % len(self._workers)]
            _send(worker, (directory, *job))
            in_flight.append(worker)
        while in_flight:
            yield _answer(in_flight.popleft())

    def close(self) -> None:
        """End every worker: closing its input ends it; a stuck one is killed."""
        for worker in self._workers:
            _stop(worker)
        self._workers = []


def _start_worker() -> subprocess.Popen[bytes]:
    """``python -m wicked_dr.sources.scan_worker`` with this interpreter and this package."""
    package_parent = str(Path(__file__).resolve().parents[2])
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join(filter(None, [package_parent,
                                                       os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen(
        [sys.executable, "-m", "wicked_dr.sources.scan_worker"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True)


def _send(worker: subprocess.Popen[bytes], job: tuple[str, list[str], list[Key | None]]) -> None:
    try:
        write_frame(_pipe(worker.stdin), pickle.dumps(job, protocol=5))
    except BrokenPipeError:
        raise _died(worker) from None


def _answer(worker: subprocess.Popen[bytes]) -> list[Result]:
    try:
        payload = read_frame(_pipe(worker.stdout))
    except EOFError:
        payload = None
    if payload is None:
        raise _died(worker)
    answer: list[Result] = pickle.loads(payload)  # from our own child only
    return answer


def _pipe(stream: IO[bytes] | None) -> IO[bytes]:
    assert stream is not None  # both pipes are created in _start_worker
    return stream


def _died(worker: subprocess.Popen[bytes]) -> SourceError:
    code = worker.poll()
    return SourceError(f"a volume scan worker (pid {worker.pid}) exited unexpectedly "
                       f"(status {code}); the snapshot was not written")


def _stop(worker: subprocess.Popen[bytes]) -> None:
    for stream in (worker.stdin, worker.stdout):
        try:
            if stream is not None:
                stream.close()
        except OSError:
            pass  # a broken pipe on close: the worker is gone already
    try:
        worker.wait(timeout=5)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()
