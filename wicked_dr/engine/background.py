"""One background thread that runs jobs in the order they were submitted."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

_Job = tuple[Callable[..., object], tuple[Any, ...]]


class Background:
    """A FIFO worker thread. The first exception a job raises is raised again by ``wait``
    in the caller's thread, and the jobs after it are skipped (they may depend on it).

    At most ``backlog`` jobs wait: ``submit`` blocks beyond, so a thread that falls behind
    (a slow disk under the index cache) slows the caller down instead of letting their
    arguments pile up in memory."""

    def __init__(self, name: str, backlog: int = 4) -> None:
        self._jobs: queue.Queue[_Job | None] = queue.Queue(maxsize=backlog)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, function: Callable[..., object], *args: Any) -> None:
        """Run ``function(*args)`` after every job submitted before it."""
        self._jobs.put((function, args))

    def wait(self) -> None:
        """Block until every job submitted so far ran; raise the first failure."""
        self._jobs.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def close(self) -> None:
        """Finish the jobs submitted (failures ignored) and end the thread."""
        self._jobs.put(None)
        self._thread.join()

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                if self._error is None:
                    job[0](*job[1])
            except BaseException as exc:  # raised again by wait() in the caller's thread
                self._error = exc
            finally:
                self._jobs.task_done()
        self._jobs.task_done()
