"""Two hand-built mechanisms against the standard ones they replace (run by hand).

    python bench/gen_volume.py /tmp/vol --users 20000
    python bench/bench_mechanisms.py /tmp/vol --workers 4 --repeats 3

1. The scan: every batch of the volume (``BATCH_NAMES`` names of one directory, as a backup
   cuts them) through ``ScanPool`` and through ``ProcessPoolExecutor.map(scan_batch, ...)``
   with as many workers (also at the pool's niceness), worker start-up included. Twice: a
   full scan (no stat cache: every file read and hashed, its content sent back) and an
   unchanged one (every stat key known: answers are ranges). For the full scan also the
   peak memory of the main process when its consumer is slower than the workers (as packing
   is in a backup): ``ScanPool`` keeps two jobs in flight per worker, ``Executor.map``
   submits every job at once and holds each answer until it is taken.
2. The index cache: the volume's blob ids, in packs of ``PACK_BLOBS``, put into a fresh
   ``IndexCache`` as one backup run, by its recursive-CTE insert and by a plain
   ``executemany`` of the same sorted rows.

Prints the median of ``--repeats`` for each (the machine's load too: on a shared machine the
figures drift).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import multiprocessing
import os
import stat
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from wicked_dr.engine.scan_pool import ScanPool
from wicked_dr.engine.scan_worker import NICENESS, Item, Job, scan_batch
from wicked_dr.engine.tree_scan import BATCH_NAMES
from wicked_dr.repository.entry_lines import stat_key
from wicked_dr.repository.index import IndexCache
from wicked_dr.repository.packs import PackRecord

CONSUME_S = 0.02  # a slow consumer: about what packing 0.5 MiB of content takes
_consume_s = 0.0
PACK_BLOBS = 13_000  # a 20 k-user volume's ~96 k blobs make 7-8 packs of 8 MiB


def jobs(volume: Path, *, cached: bool) -> list[Job]:
    """Every batch of every directory; with ``cached``, every file's current stat key."""
    out: list[Job] = []
    future = time.time_ns() + 10**12  # nothing counts as racy: unchanged files are reused
    for directory, dirnames, filenames in os.walk(volume):
        dirnames.sort()
        rel = os.path.relpath(directory, volume)
        names = sorted(dirnames + filenames)
        for start in range(0, len(names), BATCH_NAMES):
            batch = names[start:start + BATCH_NAMES]
            keys = [_key(f"{directory}/{name}") if cached else None for name in batch]
            out.append(Job(directory, "" if rel == "." else rel, batch, keys, future))
    return out


def _key(path: str) -> str | None:
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        return None
    return stat_key(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def through_pool(batches: list[Job], workers: int) -> int:
    with ScanPool(workers) as pool:
        return _count(pool.map(batches))


def through_executor(batches: list[Job], workers: int) -> int:
    with ProcessPoolExecutor(max_workers=workers) as executor:
        return _count(executor.map(scan_batch, batches))


def through_forkserver_executor(batches: list[Job], workers: int) -> int:
    """The executor without fork (unsafe once the backup's pack and metadata threads run)."""
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as executor:
        return _count(executor.map(scan_batch, batches))


def through_niced_executor(batches: list[Job], workers: int) -> int:
    """The executor with its workers at the pool's niceness (scan_worker.NICENESS)."""
    with ProcessPoolExecutor(max_workers=workers, initializer=os.nice,
                             initargs=(NICENESS,)) as executor:
        return _count(executor.map(scan_batch, batches))


def _count(answers: Iterator[list[Item]]) -> int:
    items = 0
    for answer in answers:
        items += len(answer)
        if _consume_s:
            time.sleep(_consume_s)
    return items


def peak_held_mib(run: Callable[[list[Job], int], int], batches: list[Job],
                  workers: int) -> float:
    """Peak Python memory of this process while ``run`` scans with a consumer that takes
    ``CONSUME_S`` per answer, standing in for the packing a backup does with each answer."""
    global _consume_s
    _consume_s = CONSUME_S
    tracemalloc.start()
    try:
        run(batches, workers)
        return tracemalloc.get_traced_memory()[1] / (1 << 20)
    finally:
        tracemalloc.stop()
        _consume_s = 0.0


def blob_packs(volume: Path) -> list[PackRecord]:
    """The volume's distinct content ids, cut into packs as a backup would."""
    ids = sorted({hashlib.sha256(path.read_bytes()).hexdigest()
                  for path in volume.rglob("*") if path.is_file() and not path.is_symlink()})
    packs = []
    for n, start in enumerate(range(0, len(ids), PACK_BLOBS)):
        chunk = tuple(ids[start:start + PACK_BLOBS])
        packs.append(PackRecord(f"{n:064x}", 8 << 20, 2 << 20, chunk, (0,) * len(chunk),
                                (1,) * len(chunk)))
    return packs


class ExecutemanyCache(IndexCache):
    """The index cache with each pack's blob rows inserted by ``executemany``."""

    def _insert_pack(self, record: PackRecord, index_id: str) -> None:
        cursor = self._db.execute("INSERT OR IGNORE INTO packs (id, raw_size, stored_size, "
                                  "index_id) VALUES (?,?,?,?)",
                                  (record.pack_id, record.raw_size, record.stored_size,
                                   index_id))
        number = cursor.lastrowid if cursor.rowcount else self._pack_number(record.pack_id)
        rows = [(bytes.fromhex(blob_id), number) for blob_id in sorted(record.blob_ids)]
        self._db.executemany("INSERT OR IGNORE INTO blobs VALUES (?, ?)", rows)


def insert_run(cache_class: type[IndexCache], packs: list[PackRecord]) -> tuple[float, float]:
    """Wall and this thread's CPU seconds to stage and commit ``packs`` as one run."""
    with tempfile.TemporaryDirectory(prefix="bench-index-") as tmp:
        cache = cache_class(Path(tmp) / "index.sqlite")
        wall, cpu = time.perf_counter(), time.thread_time()
        cache.begin_run()
        for pack in packs:
            cache.stage_pack(pack)
        cache.stage_index("0" * 64, [p.pack_id for p in packs])
        cache.commit_run()
        result = time.perf_counter() - wall, time.thread_time() - cpu
        cache.close()
    return result


def median_s(run: Callable[[], object], repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("volume", type=Path)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for cached in (False, True):
        batches = jobs(args.volume, cached=cached)
        label = "unchanged" if cached else "full"
        for name, run in (("ScanPool", through_pool), ("ProcessPoolExecutor", through_executor),
                          ("ProcessPoolExecutor+nice", through_niced_executor),
                          ("ProcessPoolExecutor+forkserver", through_forkserver_executor)):
            median, times = median_s(functools.partial(run, batches, args.workers),
                                     args.repeats)
            print(f"scan {label:9} {name:30} {len(batches)} batches: median {median:.2f} s "
                  f"({' '.join(f'{t:.2f}' for t in times)})")
            if not cached:
                held = peak_held_mib(run, batches, args.workers)
                print(f"scan {label:9} {name:30} with a consumer taking {CONSUME_S} s an "
                      f"answer: peak Python memory {held:.1f} MiB")
    packs = blob_packs(args.volume)
    blobs = sum(len(p.blob_ids) for p in packs)
    for cache_class in (IndexCache, ExecutemanyCache):
        results = [insert_run(cache_class, packs) for _ in range(args.repeats)]
        wall = statistics.median(r[0] for r in results)
        cpu = statistics.median(r[1] for r in results)
        print(f"index insert {cache_class.__name__:16} {blobs} blobs in {len(packs)} packs: "
              f"median {wall:.3f} s wall, {cpu:.3f} s CPU of the inserting thread "
              f"({' '.join(f'{r[0]:.3f}' for r in results)})")
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
