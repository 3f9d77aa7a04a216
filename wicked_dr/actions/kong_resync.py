"""``wicked-dr kong-resync``: make the Kong Adapter rebuild Kong from wicked's data.

The live restore's step 6 on its own, e.g. after Kong's database was lost while wicked's
data was not: ``POST /resync`` when the adapter allows it (``ALLOW_RESYNC``), else a
restart of the adapter container (it syncs at every start; without
``containers.kong_adapter`` the operator is asked to restart it), then a wait until its
``/ping`` reports ``healthy: 1``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from wicked_dr.actions.common import Result, RunOptions
from wicked_dr.config import Config
from wicked_dr.errors import HTTPError
from wicked_dr.portal.kong_adapter import KongAdapterClient
from wicked_dr.portal.singletons import Singletons


@dataclass(frozen=True)
class KongResyncResult(Result):
    """How the rebuild was triggered and what the adapter reported."""

    method: str
    adapter: str
    duration_s: float
    detail: dict[str, Any] = field(default_factory=dict)


def run_kong_resync(config: Config, *, show: Callable[[str], None],
                    options: RunOptions | None = None) -> KongResyncResult:
    """Trigger a full resync and wait until the adapter is healthy again."""
    options = options or RunOptions()
    started = time.monotonic()
    adapter = KongAdapterClient(config.wicked.kong_adapter_url)
    singletons = Singletons(config, show, options.cancel)
    answering = adapter.ping().status != 0  # 0: nothing answered
    if not answering and not singletons.controlled("kong_adapter"):
        raise HTTPError(f"the Kong Adapter does not answer at {adapter.ping_url} "
                        "(wicked.kong_adapter_url): start it (it syncs at start), or set "
                        "the URL the adapter is reachable at from here")
    seen: list[str] = []
    if answering:
        singletons.wait_adapter(adapter, seen)
        outcome = adapter.resync()
        if outcome is not None:
            return KongResyncResult("resync", adapter.base_url, _since(started),
                                    {"ping": seen, **outcome.summary()})
    detail = singletons.restart_adapter(adapter)
    return KongResyncResult(str(detail.pop("method")), adapter.base_url, _since(started),
                            {"ping": seen + list(detail.pop("ping", [])), **detail})


def _since(started: float) -> float:
    return round(time.monotonic() - started, 3)
