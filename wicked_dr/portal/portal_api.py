"""portal-api seen from outside: does ``GET /ping`` answer ``{"message": "OK"}``?"""

from __future__ import annotations

from wicked_dr.portal.http import Answer, Peer, call


class PortalApiClient(Peer):
    """portal-api at ``base_url`` (``wicked.portal_api_url``)."""

    def ping(self) -> Answer:
        return call("GET", self.ping_url, timeout_s=self.timeout_s)

    def healthy(self) -> bool:
        """Whether portal-api answers /ping with OK."""
        answer = self.ping()
        return answer.status == 200 and isinstance(answer.body, dict) \
            and answer.body.get("message") == "OK"
