"""Who holds a lock: enough identity to tell a live holder from a crashed one.

In containers every process may be pid 1 and the hostname survives restarts, so a pid alone
lies: we record host, boot id, pid, the process start time and a random instance id.
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Holder:
    """The identity of a lock holder."""

    host: str
    boot_id: str
    pid: int
    start_time: int
    instance: str

    def to_json(self) -> dict[str, Any]:
        return {"host": self.host, "boot_id": self.boot_id, "pid": self.pid,
                "start_time": self.start_time, "instance": self.instance}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Holder:
        return cls(str(doc.get("host", "")), str(doc.get("boot_id", "")),
                   int(doc.get("pid", 0)), int(doc.get("start_time", 0)),
                   str(doc.get("instance", "")))

    def describe(self) -> str:
        return f"host {self.host}, pid {self.pid}, instance {self.instance}"

    def is_alive_here(self) -> bool:
        """Whether this holder is a process still running on this very boot of this host."""
        if self.host != socket.gethostname() or self.boot_id != boot_id():
            return False
        return process_start_time(self.pid) == self.start_time


@cache
def current_holder() -> Holder:
    """This process's identity (one instance id per process)."""
    pid = os.getpid()
    return Holder(socket.gethostname(), boot_id(), pid, process_start_time(pid) or 0,
                  secrets.token_hex(8))


def boot_id() -> str:
    """The kernel's boot id (changes at every boot)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def process_start_time(pid: int) -> int | None:
    """The process start time in clock ticks since boot, or None when it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22; the command name (field 2) may contain spaces, so split after its ')'.
    return int(stat.rsplit(")", 1)[1].split()[19])
