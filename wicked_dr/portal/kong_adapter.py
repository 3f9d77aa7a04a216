"""The Kong Adapter's HTTP calls: ``GET /ping`` and ``POST /resync``.

``/ping`` answers ``{"healthy": 1}`` when the adapter is in sync with Kong, ``2`` (HTTP 503)
while it initialises (its start-up sync), ``0`` when portal-api or Kong cannot be reached.
``POST /resync`` runs a full resync when the adapter was started with ``ALLOW_RESYNC``
(404 otherwise: wicked's Helm chart does not set it, so restarting the adapter, which
syncs at every start, is the other way) and answers its statistics, or 500 with ``err``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from wicked_dr.errors import HTTPError
from wicked_dr.portal.http import Peer, call

RESYNC_TIMEOUT_S = 1800.0  # a full resync of a large portal takes minutes


@dataclass(frozen=True)
class AdapterHealth:
    """What /ping said: ``healthy`` 1, 2 or 0, or None when nothing answered."""

    healthy: int | None
    status: int

    def describe(self) -> str:
        if self.healthy is None:
            return "not answering" if self.status == 0 else f"HTTP {self.status}"
        return {1: "healthy: 1", 2: "healthy: 2 (initialising)",
                0: "healthy: 0 (portal-api or Kong unreachable)"}.get(
                    self.healthy, f"healthy: {self.healthy}")


@dataclass(frozen=True)
class ResyncOutcome:
    """The statistics of a full resync: requests per method and the changes it made."""

    statistics: dict[str, Any]

    @property
    def changes(self) -> int:
        """How many writes (POST/PUT/PATCH/DELETE) the resync made to Kong."""
        actions = self.statistics.get("actions") or []
        return sum(1 for a in actions if isinstance(a, dict)
                   and str(a.get("method", "")).upper() in ("POST", "PUT", "PATCH", "DELETE"))

    def summary(self) -> dict[str, Any]:
        counts = {k: v for k, v in self.statistics.items() if isinstance(v, int)}
        return {"changes": self.changes, "requests": counts,
                "failed_comparisons": len(self.statistics.get("failedComparisons") or [])}


class KongAdapterClient(Peer):
    """The Kong Adapter at ``base_url`` (``wicked.kong_adapter_url``)."""

    def ping(self) -> AdapterHealth:
        answer = call("GET", self.ping_url, timeout_s=self.timeout_s)
        healthy = answer.body.get("healthy") if isinstance(answer.body, dict) else None
        return AdapterHealth(healthy if isinstance(healthy, int) else None, answer.status)

    def resync(self, timeout_s: float = RESYNC_TIMEOUT_S) -> ResyncOutcome | None:
        """A full resync; None when the adapter does not allow it (404). HTTPError when it
        failed or did not answer."""
        answer = call("POST", f"{self.base_url}/resync", timeout_s=timeout_s)
        if answer.status == 404:
            return None
        if answer.status != 200 or not isinstance(answer.body, dict):
            detail = answer.body.get("err") if isinstance(answer.body, dict) else None
            raise HTTPError(f"POST {self.base_url}/resync failed: "
                            f"{detail or answer.error or f'HTTP {answer.status}'}")
        return ResyncOutcome(answer.body)
