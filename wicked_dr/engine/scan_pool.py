"""A pool of scan worker processes whose answers come back in the order the jobs went out.

Job ``i`` goes to worker ``i % n`` and each worker answers in order, so reading answer ``i``
from worker ``i % n`` keeps the manifest order without sequence numbers. At most
``IN_FLIGHT_PER_WORKER`` jobs are out per worker (memory stays bounded). Jobs are written by a
feeder thread, in order: a job frame may exceed a pipe's buffer, and if this thread wrote it
while the worker waited for us to read its previous answer, both would wait forever. With
``workers=0`` the jobs run in this process: the same code, no processes (tests, hosts with
one CPU, or when worker processes cannot start).

Not ``concurrent.futures.ProcessPoolExecutor``: its ``map`` (Python 3.11) submits every job
at once and holds each answer until it is taken (peak memory 8-8.4 MiB against 4.6 MiB here,
20 000 users, a consumer as slow as packing; the gap grows with the volume), and it forks the
backup's multi-threaded process, or with forkserver took 3.9-4.7 s for a full scan against
1.1-2.0 s here. Forking, it was as fast as this pool (1.5-2.2 s; medians of 3 in five runs of
``bench/bench_mechanisms.py``, loaded 2-CPU machine): speed alone would not justify it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pickle
import queue
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO

from wicked_dr.engine.scan_worker import Item, Job, read_frame, scan_batch, write_frame
from wicked_dr.errors import SourceError
from wicked_dr.log import get_logger

log = get_logger(__name__)
IN_FLIGHT_PER_WORKER = 2
PIPE_SIZE = 1 << 20
Worker = subprocess.Popen[bytes]


class ScanPool:
    """Runs ``scan_batch`` jobs, in worker processes when ``workers`` > 0."""

    def __init__(self, workers: int) -> None:
        self._workers: list[Worker] = []
        self._outbox: queue.Queue[tuple[Worker, bytes] | None] = queue.Queue()
        self._feeder: threading.Thread | None = None
        try:
            for _ in range(workers):
                self._workers.append(_start_worker())
        except OSError as exc:
            # Slower, never wrong: the same scan runs in this process.
            log.warning("scan workers could not start; scanning in the main process",
                        error=str(exc))
            self.close()
        if self._workers:
            self._feeder = threading.Thread(target=self._feed, name="scan-feeder", daemon=True)
            self._feeder.start()

    def __enter__(self) -> ScanPool:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def workers(self) -> int:
        return len(self._workers)

    def map(self, jobs: Iterable[Job]) -> Iterator[list[Item]]:
        """Answers to ``jobs``, in order; jobs are pulled lazily."""
        if not self._workers:
            for job in jobs:
                yield scan_batch(job)
            return
        yield from self._map_parallel(iter(jobs))

    def _map_parallel(self, jobs: Iterator[Job]) -> Iterator[list[Item]]:
        window = IN_FLIGHT_PER_WORKER * len(self._workers)
        in_flight: deque[Worker] = deque()
        for sent, job in enumerate(jobs):
            if len(in_flight) == window:
                yield _answer(in_flight.popleft())
            worker = self._workers[sent % len(self._workers)]
            self._outbox.put((worker, pickle.dumps(tuple(job), protocol=5)))
            in_flight.append(worker)
        while in_flight:
            yield _answer(in_flight.popleft())

    def _feed(self) -> None:
        while (message := self._outbox.get()) is not None:
            worker, payload = message
            # A worker that is gone is reported when its answer is read.
            with contextlib.suppress(OSError, ValueError):
                write_frame(_pipe(worker.stdin), payload)

    def close(self) -> None:
        """End every worker: closing its pipes ends it; a stuck one is killed."""
        if self._feeder is not None:
            self._outbox.put(None)
        for worker in self._workers:
            _close_pipe(worker.stdout)  # a worker blocked on an answer gets EPIPE and ends
        if self._feeder is not None:
            self._feeder.join(timeout=10)
            self._feeder = None
        for worker in self._workers:
            _close_pipe(worker.stdin)
        if self._workers:
            # Workers end on their own once their input is closed (about 30 ms of interpreter
            # shut-down): reap them in the background instead of making the backup wait.
            threading.Thread(target=_reap, args=(self._workers,), name="scan-reaper",
                             daemon=True).start()
        self._workers = []


def _start_worker() -> Worker:
    """``python -S -m wicked_dr.engine.scan_worker`` with this interpreter and this package.

    ``-S`` (no ``site``): a worker needs the standard library and this package only, and
    ``site`` with its ``.pth`` files can take most of an interpreter's start-up (30 of
    40 ms on the test machine), paid once per worker per backup."""
    package_parent = str(Path(__file__).resolve().parents[2])
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join(filter(None, [package_parent,
                                                       os.environ.get("PYTHONPATH")]))}
    worker = subprocess.Popen(
        [sys.executable, "-S", "-m", "wicked_dr.engine.scan_worker"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True)
    for pipe in (worker.stdin, worker.stdout):
        _widen(pipe)
    return worker


def _widen(pipe: IO[bytes] | None) -> None:
    """A 1 MiB pipe instead of 64 KiB: an answer of a few MiB then crosses in a few
    wake-ups of the two processes rather than dozens (Linux; elsewhere, or above the
    system's pipe-max-size, the default stays)."""
    with contextlib.suppress(AttributeError, OSError):
        fcntl.fcntl(_pipe(pipe).fileno(), fcntl.F_SETPIPE_SZ, PIPE_SIZE)


def _answer(worker: Worker) -> list[Item]:
    try:
        payload = read_frame(_pipe(worker.stdout))
    except (EOFError, ValueError):
        payload = None
    if payload is None:
        raise _died(worker)
    answer: list[Item] = pickle.loads(payload)  # from our own child only
    return answer


def _pipe(stream: IO[bytes] | None) -> IO[bytes]:
    assert stream is not None  # both pipes are created in _start_worker
    return stream


def _died(worker: Worker) -> SourceError:
    try:
        code = worker.wait(timeout=1)
    except subprocess.TimeoutExpired:
        code = None
    return SourceError(f"a volume scan worker (pid {worker.pid}) exited unexpectedly "
                       f"(status {code}); the snapshot was not written")


def _close_pipe(stream: IO[bytes] | None) -> None:
    try:
        if stream is not None:
            stream.close()
    except OSError:
        pass  # a broken pipe on close: the worker is gone already


def _reap(workers: list[Worker]) -> None:
    for worker in workers:
        try:
            worker.wait(timeout=5)
        except subprocess.TimeoutExpired:
            worker.kill()  # a worker that does not end on end of input is stuck
            worker.wait()
