"""Snapshot ids carry their UTC start time; a malformed id is damage, not a crash."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from wicked_dr.actions.backup import new_snapshot_id
from wicked_dr.engine.catalog import snapshot_time
from wicked_dr.errors import IntegrityError


@pytest.mark.parametrize(("snapshot_id", "expected"), [
    ("20261126T051500.123456Z-3fa2c1d0", datetime(2026, 11, 26, 5, 15, 0, 123456, tzinfo=UTC)),
    ("20261126T051500.000000Z-3fa2c1d0", datetime(2026, 11, 26, 5, 15, tzinfo=UTC)),
    ("20261126T051500Z-3fa2c1d0", datetime(2026, 11, 26, 5, 15, tzinfo=UTC)),
    ("20240229T235959Z", datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC)),
])
def test_snapshot_time_reads_ids_with_and_without_microseconds(
        snapshot_id: str, expected: datetime) -> None:
    """Both id forms give the UTC time they start with."""
    assert snapshot_time(snapshot_id) == expected


def test_snapshot_time_of_a_new_id_round_trips() -> None:
    """An id made by backup reads back as a time after the one it was made after."""
    first = new_snapshot_id()
    second = new_snapshot_id(after=first)
    assert snapshot_time(first) < snapshot_time(second)


@pytest.mark.parametrize("snapshot_id", [
    "", "latest", "3fa2c1d0", "20261126-3fa2c1d0",
    "2026112T051500Z-3fa2c1d0",          # a short date: strptime alone would take it
    "20261126T51500Z-3fa2c1d0",          # a short time
    "20261126T051500.1234Z-3fa2c1d0",    # microseconds are six digits
    "20261126T051500.123456-3fa2c1d0",   # no Z
    "20261126 051500Z-3fa2c1d0",
    "20261326T051500Z-3fa2c1d0",         # month 13
    "20230229T051500Z-3fa2c1d0",         # not a leap year
    "20261126T246000Z-3fa2c1d0",
])
def test_snapshot_time_of_a_malformed_id_is_an_integrity_error(snapshot_id: str) -> None:
    """An id that does not start with a time in exactly the id format names the id."""
    with pytest.raises(IntegrityError, match="does not start with a time"):
        snapshot_time(snapshot_id)
