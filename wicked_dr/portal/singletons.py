"""portal-api, the Kong Adapter, mailer and chatbot: stopped, started and waited for.

Each ``containers.*`` key that is set is controlled through Docker (``containers.py``);
for one that is not, the step becomes an instruction shown to the operator, and the wait
that follows (portal-api's ``/ping``, the adapter's ``healthy: 1``) is the signal that it
was done, so the flow is the same with or without container control. One rule has no
override: while something answers at portal-api's address, the volume is not swapped (two
writers on one volume is what a restore must never cause).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from wicked_dr.cancel import CancelToken
from wicked_dr.config import Config
from wicked_dr.errors import HTTPError, RefusedError
from wicked_dr.log import get_logger
from wicked_dr.portal.containers import ContainerControl
from wicked_dr.portal.kong_adapter import AdapterHealth, KongAdapterClient
from wicked_dr.portal.portal_api import PortalApiClient

log = get_logger(__name__)

# Stop order: the listeners first (they call portal-api), portal-api last; start reversed.
STOP_ORDER = ("chatbot", "mailer", "kong_adapter", "portal_api")
POLL_S = 0.25


class Singletons:
    """The portal's singletons of one configuration; ``show`` prints instructions."""

    def __init__(self, config: Config, show: Callable[[str], None],
                 cancel: CancelToken) -> None:
        self.config = config
        self.show = show
        self.cancel = cancel
        self.selectors: dict[str, str] = {
            key: value for key in (*STOP_ORDER, "kong")
            if (value := getattr(config.containers, key))}
        self._control: ContainerControl | None = None

    @property
    def control(self) -> ContainerControl:
        if self._control is None:
            self._control = ContainerControl(self.config.containers.docker_url)
        return self._control

    def controlled(self, key: str) -> bool:
        return key in self.selectors

    def describe(self) -> dict[str, str]:
        return {key: self.selectors.get(key, "not configured: instructions")
                for key in STOP_ORDER}

    # --- preflight and stop

    def preflight(self, portal: PortalApiClient) -> None:
        """Docker and every configured container reachable; without control of portal-api,
        refuse while it answers."""
        for key, selector in self.selectors.items():
            self.control.select(selector, f"containers.{key}")
        if not self.controlled("portal_api"):
            self.refuse_if_answering(portal, "containers.portal_api is not set, so "
                                     "wicked-dr cannot stop it: stop portal-api, then run "
                                     "the restore again")

    def refuse_if_answering(self, portal: PortalApiClient, what_to_do: str) -> None:
        answer = portal.ping()
        if answer.answered:
            raise RefusedError(f"portal-api answers GET {portal.ping_url} (HTTP "
                               f"{answer.status}): it still writes the volume; {what_to_do}")

    def running_before(self) -> dict[str, list[str]]:
        """The controlled singletons that run now (restarted by a rollback)."""
        return {key: self.control.running(self.selectors[key], f"containers.{key}")
                for key in STOP_ORDER if self.controlled(key)}

    def stop_all(self, portal: PortalApiClient) -> None:
        """Stop chatbot, mailer, the adapter, portal-api; then nothing may answer at
        portal-api's address (another instance would keep writing)."""
        for key in STOP_ORDER:
            self.cancel.check()
            if self.controlled(key):
                self.control.stop(self.selectors[key], f"containers.{key}")
            else:
                self.show(f"  not controlled: make sure the {_label(key)} is stopped")
        self.refuse_if_answering(portal, "another portal-api instance runs on this volume "
                                 "(not the configured container): stop it first")

    # --- start and wait

    def start_portal_api(self, portal: PortalApiClient) -> None:
        """Start portal-api (or ask for it) and wait for ``GET /ping`` to answer OK."""
        timeout = float(self.config.restore.portal_api_timeout_s)
        if self.controlled("portal_api"):
            self._start("portal_api")
        else:
            self.show(f"  ACTION: start portal-api now; waiting for GET {portal.ping_url}")
            timeout += self.config.restore.operator_timeout_s
        self._wait(portal.healthy, timeout,
                   f"portal-api did not answer GET {portal.ping_url} with OK within "
                   f"{timeout:g} s (restore.portal_api_timeout_s); see its logs")

    def rebuild(self, adapter: KongAdapterClient) -> dict[str, Any]:
        """Make the Kong Adapter rebuild Kong from the restored data: its start-up sync
        (started now, after portal-api) and ``POST /resync`` when it allows it."""
        seen: list[str] = []
        extra_s = 0.0
        if self.controlled("kong_adapter"):
            self._start("kong_adapter")
            method = "restart"
        else:
            # It was stopped before the swap (step 4 asked for it): its start-up sync, on
            # the restored data, is the rebuild.
            self.show(f"  ACTION: start the Kong Adapter now (it syncs at start); waiting "
                      f"for {adapter.ping_url} to report healthy: 1")
            method, extra_s = "started by the operator", self.config.restore.operator_timeout_s
        self.wait_adapter(adapter, seen, extra_s=extra_s)
        outcome = adapter.resync()
        if outcome is not None:
            return {"method": "resync", "ping": seen, **outcome.summary()}
        return {"method": method, "ping": seen,
                "note": "the adapter syncs at every start; /resync is not allowed"}

    def restart_adapter(self, adapter: KongAdapterClient) -> dict[str, Any]:
        """``kong-resync`` without /resync: restart the adapter container (or ask)."""
        seen: list[str] = []
        if not self.controlled("kong_adapter"):
            return self._ask_for_adapter_restart(adapter, seen)
        for name in self.control.running(self.selectors["kong_adapter"],
                                         "containers.kong_adapter") or []:
            self.control.restart(name)
        self._start("kong_adapter")
        self.wait_adapter(adapter, seen, must_go_down=False)
        return {"method": "restart", "ping": seen}

    def _ask_for_adapter_restart(self, adapter: KongAdapterClient,
                                 seen: list[str]) -> dict[str, Any]:
        self.show(f"  ACTION: the Kong Adapter does not allow POST /resync: restart it now "
                  f"(it syncs at start); waiting for {adapter.ping_url} to restart and "
                  "report healthy: 1")
        self.wait_adapter(adapter, seen, must_go_down=True,
                          extra_s=self.config.restore.operator_timeout_s)
        return {"method": "restart (operator)", "ping": seen}

    def wait_adapter(self, adapter: KongAdapterClient, seen: list[str], *,
                     must_go_down: bool = False, extra_s: float = 0.0) -> None:
        """Wait until /ping reports healthy: 1 (through 2 while it syncs); with
        ``must_go_down``, only after it was seen not healthy (it restarted)."""
        went_down = not must_go_down
        timeout = self.config.restore.kong_adapter_timeout_s + extra_s

        def healthy() -> bool:
            nonlocal went_down
            health = adapter.ping()
            _remember(seen, health)
            went_down = went_down or health.healthy != 1
            return went_down and health.healthy == 1

        self._wait(healthy, timeout,
                   f"the Kong Adapter did not report healthy: 1 at {adapter.ping_url} within "
                   f"{timeout:g} s (restore.kong_adapter_timeout_s; last: "
                   f"{seen[-1] if seen else 'nothing'})")

    def start_listeners(self) -> None:
        for key in ("mailer", "chatbot"):
            if self.controlled(key):
                self._start(key)
            else:
                self.show(f"  ACTION: start the {_label(key)} if you run one")

    # --- rollback

    def stop_portal_api_for_rollback(self, portal: PortalApiClient) -> None:
        """Stop whatever runs on the restored data before it is swapped back."""
        for key in ("kong_adapter", "portal_api"):
            if self.controlled(key):
                self.control.stop(self.selectors[key], f"containers.{key}")
        if not self.controlled("portal_api"):
            self.show("  ACTION: stop portal-api now (rolling back)")
            timeout = float(self.config.restore.operator_timeout_s)
            self._wait(lambda: not portal.ping().answered, timeout,
                       f"portal-api still answers {portal.ping_url}; stop it")

    def restart_original(self, running_before: dict[str, list[str]],
                         portal: PortalApiClient) -> None:
        """Start again what ran before the restore, portal-api first."""
        for key in reversed(STOP_ORDER):
            names = running_before.get(key) or []
            if names:
                self.control.start(names)
        if not self.controlled("portal_api"):
            self.show("  ACTION: start portal-api again (the live data is back)")

    # --- helpers

    def _start(self, key: str) -> None:
        names = [str(c.name) for c in self.control.select(self.selectors[key],
                                                          f"containers.{key}")]
        self.control.start(names)

    def _wait(self, ready: Callable[[], bool], timeout_s: float, message: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            if time.monotonic() >= deadline:
                raise HTTPError(message)
            self.cancel.sleep(POLL_S)


def _remember(seen: list[str], health: AdapterHealth) -> None:
    state = health.describe()
    if not seen or seen[-1] != state:
        seen.append(state)


def _label(key: str) -> str:
    return {"portal_api": "portal-api", "kong_adapter": "Kong Adapter", "mailer": "mailer",
            "chatbot": "chatbot"}[key]
