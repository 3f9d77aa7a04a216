"""JSON over HTTP to wicked's components (stdlib ``urllib``: a handful of calls per restore
need no HTTP library). A component that does not answer is an answer too (status 0), so
that callers can poll without catching exceptions."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Answer:
    """A status (0: no answer at all) and the parsed JSON body (None when not JSON)."""

    status: int
    body: Any = None
    error: str = ""

    @property
    def answered(self) -> bool:
        return self.status != 0


class Peer:
    """A wicked component at ``base_url`` that answers ``GET /ping``."""

    def __init__(self, base_url: str, timeout_s: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s

    @property
    def ping_url(self) -> str:
        return f"{self.base_url}/ping"


def call(method: str, url: str, *, timeout_s: float = 5.0) -> Answer:
    """One request; never raises for a connection failure or an HTTP error status."""
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None,
                                     headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return Answer(int(response.status), _json(response.read()))
    except urllib.error.HTTPError as exc:
        return Answer(int(exc.code), _json(exc.read()), f"HTTP {exc.code}")
    except (TimeoutError, urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return Answer(0, None, str(reason))


def _json(data: bytes) -> Any:
    try:
        return json.loads(data) if data else None
    except ValueError:
        return None
