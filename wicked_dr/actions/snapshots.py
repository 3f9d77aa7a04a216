"""``wicked-dr snapshots``: what the repository holds."""

from __future__ import annotations

from typing import Any

from wicked_dr.actions.common import open_repository
from wicked_dr.config import Config
from wicked_dr.engine.catalog import list_snapshots


def run_snapshots(config: Config) -> list[dict[str, Any]]:
    """One row per snapshot, oldest first."""
    repo = open_repository(config)
    return [_row(doc) for doc in list_snapshots(repo)]


def _row(doc: dict[str, Any]) -> dict[str, Any]:
    summary = doc.get("summary", {})
    tokens = (doc.get("sources") or {}).get("kong_tokens")
    return {"id": doc["id"], "time": doc.get("time"), "host": doc.get("host"),
            "files": summary.get("files", 0), "bytes": summary.get("bytes", 0),
            "errors": summary.get("errors", 0), "verified": doc.get("verified", False),
            "kong_tokens": bool(tokens)}
