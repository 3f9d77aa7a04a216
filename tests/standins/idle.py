"""Stand-in of a component that only has to exist (mailer, chatbot, a Kong node).

env: ``NAME`` (the record file's stem: ``$STATE/<NAME>.events.jsonl``), ``STATE``.
Records ``start``, sleeps until SIGTERM, records ``stop`` and exits 0 at once.
"""

from __future__ import annotations

import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _records import record, stop_on_sigterm  # type: ignore[import-not-found]

NAME = os.environ.get("NAME", "idle")


def main() -> None:
    stop_on_sigterm(NAME)
    record(NAME, "start")
    print(f"stand-in {NAME} running", flush=True)
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
