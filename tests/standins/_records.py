"""Shared by the stand-ins: JSON-line event records in ``$STATE`` (standard library only)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

STATE = Path(os.environ.get("STATE", "/standin-state"))


def record(component: str, event: str, **fields: Any) -> None:
    """Append ``{"event", "pid", "time", **fields}`` to ``$STATE/<component>.events.jsonl``."""
    line = json.dumps({"event": event, "pid": os.getpid(), "time": time.time(), **fields})
    with open(STATE / f"{component}.events.jsonl", "a", encoding="utf-8") as fh:
        fh.write(line + "\n")
        fh.flush()


def stop_on_sigterm(component: str) -> None:
    """SIGTERM records ``stop`` and exits 0 at once (no graceful draining to wait for)."""

    def handler(signum: int, frame: object) -> NoReturn:
        try:
            record(component, "stop", signal=signum)
        finally:
            sys.stdout.flush()
            os._exit(0)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def send_json(handler: Any, status: int, body: Any) -> None:
    """Answer an HTTP request (a BaseHTTPRequestHandler) with ``body`` as JSON."""
    data = json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)
