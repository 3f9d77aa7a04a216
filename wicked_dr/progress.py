"""Progress reporting, injected into long work: a bar on a TTY, nothing otherwise.

Domain code never prints; it calls ``progress(kind, amount)`` when it was given a reporter.
``Progress`` is defined here once; the module imports no other wicked_dr module and rich only
when a bar is drawn, so every layer (engine, actions, cli) can import it cheaply.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

Progress = Callable[[str, int], None]


@contextlib.contextmanager
def progress_reporter(title: str, *, enabled: bool) -> Iterator[Progress | None]:
    """A byte-counting progress bar on stderr when ``enabled`` and stderr is a TTY."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import DownloadColumn, SpinnerColumn, TaskID, TextColumn
    from rich.progress import Progress as Bar

    with Bar(SpinnerColumn(), TextColumn("{task.description}"), DownloadColumn(),
             console=Console(stderr=True), transient=True) as bar:
        tasks: dict[str, TaskID] = {}

        def report(kind: str, amount: int) -> None:
            if kind not in tasks:
                tasks[kind] = bar.add_task(f"{title}: {kind}", total=None)
            bar.advance(tasks[kind], amount)

        yield report
