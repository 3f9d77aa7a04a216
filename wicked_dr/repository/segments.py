"""Blobs stored back to back, the unit a scan worker hands to the pack builder.

Standard library only: scan workers import it, and a worker must start within tens of
milliseconds (see engine/scan_worker.py).
"""

from __future__ import annotations

from typing import NamedTuple


class Segment(NamedTuple):
    """Distinct blobs back to back: ``data`` is their bytes, ``lengths`` cut it in order.

    One segment per batch of files instead of one tuple per blob: the main process packs
    a batch's new content with a handful of operations, and one large ``bytes`` crosses the
    worker's pipe faster than thousands of small ones."""

    blob_ids: list[str]
    lengths: list[int]
    data: bytes

