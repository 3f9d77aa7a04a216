"""Retention's bucket rules (``engine/retention.py``), table-driven: each rule alone and
combined, keep_within, the newest verified snapshot, DST in Europe/Berlin, month ends, leap
days, year ends and ISO weeks 53 and 1. Times in the tables are UTC; buckets are judged in
the zone of each case."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from wicked_dr.config import RetentionConfig
from wicked_dr.engine.retention import Candidate, apply_policy
from wicked_dr.errors import RefusedError

NOTHING = {"keep_last": 0, "keep_hourly": 0, "keep_daily": 0, "keep_weekly": 0,
           "keep_monthly": 0, "keep_yearly": 0, "keep_within": None}
BERLIN = "Europe/Berlin"


def policy(**rules: Any) -> RetentionConfig:
    """Only the rules given; every other keep_* is 0."""
    return RetentionConfig.model_validate({**NOTHING, **rules})


def at(stamp: str) -> Candidate:
    """A snapshot taken at ``stamp`` (UTC, 'YYYY-MM-DDTHH:MM'), named by that stamp."""
    return Candidate(stamp, datetime.fromisoformat(stamp).replace(tzinfo=UTC))


@dataclass(frozen=True)
class Case:
    name: str
    rules: dict[str, Any]
    times: tuple[str, ...]
    kept: set[str]
    zone: str = "UTC"


CASES = [
    Case("last alone", {"keep_last": 2},
         ("2026-11-01T10:00", "2026-11-02T10:00", "2026-11-03T10:00", "2026-11-04T10:00"),
         {"2026-11-03T10:00", "2026-11-04T10:00"}),
    Case("hourly: newest of each of the last 2 hours holding one", {"keep_hourly": 2},
         ("2026-11-30T09:30", "2026-11-30T10:05", "2026-11-30T10:50", "2026-11-30T12:30"),
         {"2026-11-30T10:50", "2026-11-30T12:30"}),
    Case("daily, UTC", {"keep_daily": 2},
         ("2026-11-28T12:00", "2026-11-29T23:00", "2026-11-30T01:00", "2026-11-30T22:00"),
         {"2026-11-29T23:00", "2026-11-30T22:00"}),
    Case("daily, Berlin: 23:00 UTC is the next local day", {"keep_daily": 2},
         ("2026-11-28T12:00", "2026-11-29T23:00", "2026-11-30T01:00", "2026-11-30T22:00"),
         {"2026-11-28T12:00", "2026-11-30T22:00"}, BERLIN),
    Case("daily: fewer days than asked keeps one per day", {"keep_daily": 10},
         ("2026-11-28T12:00", "2026-11-28T13:00", "2026-11-30T01:00"),
         {"2026-11-28T13:00", "2026-11-30T01:00"}),
    Case("weekly: ISO week 53 of 2026 spans the new year", {"keep_weekly": 3},
         ("2026-12-27T12:00", "2026-12-31T12:00", "2027-01-02T12:00", "2027-01-04T12:00"),
         {"2026-12-27T12:00", "2027-01-02T12:00", "2027-01-04T12:00"}),
    Case("weekly: 2024-12-30 is in 2025-W01", {"keep_weekly": 2},
         ("2024-12-29T12:00", "2024-12-31T12:00", "2025-01-01T12:00"),
         {"2024-12-29T12:00", "2025-01-01T12:00"}),
    Case("monthly: 31st, 28th Feb, 1st and 31st Mar", {"keep_monthly": 3},
         ("2026-01-31T12:00", "2026-02-28T12:00", "2026-03-01T12:00", "2026-03-31T12:00"),
         {"2026-01-31T12:00", "2026-02-28T12:00", "2026-03-31T12:00"}),
    Case("monthly, UTC: leap day 23:30 is February", {"keep_monthly": 2},
         ("2024-01-31T12:00", "2024-02-29T12:00", "2024-02-29T23:30", "2024-03-01T10:00"),
         {"2024-02-29T23:30", "2024-03-01T10:00"}),
    Case("monthly, Berlin: leap day 23:30 UTC is 1 March", {"keep_monthly": 2},
         ("2024-01-31T12:00", "2024-02-29T12:00", "2024-02-29T23:30", "2024-03-01T10:00"),
         {"2024-02-29T12:00", "2024-03-01T10:00"}, BERLIN),
    Case("monthly, Berlin: 30 April 23:30 UTC is May", {"keep_monthly": 2},
         ("2026-04-15T12:00", "2026-04-30T21:30", "2026-04-30T23:30"),
         {"2026-04-30T21:30", "2026-04-30T23:30"}, BERLIN),
    Case("yearly, UTC: 31 Dec 23:30 is the old year", {"keep_yearly": 2},
         ("2025-06-01T12:00", "2026-12-31T22:00", "2026-12-31T23:30"),
         {"2025-06-01T12:00", "2026-12-31T23:30"}),
    Case("yearly, Berlin: 31 Dec 23:30 UTC is the new year", {"keep_yearly": 2},
         ("2025-06-01T12:00", "2026-12-31T22:00", "2026-12-31T23:30"),
         {"2026-12-31T22:00", "2026-12-31T23:30"}, BERLIN),
    Case("DST autumn: the hour 02 that happens twice is two buckets", {"keep_hourly": 2},
         ("2026-10-25T00:15", "2026-10-25T00:45", "2026-10-25T01:15", "2026-10-25T01:45"),
         {"2026-10-25T00:45", "2026-10-25T01:45"}, BERLIN),
    Case("DST spring: the missing hour 02 holds nothing; 01 and 03 are neighbours",
         {"keep_hourly": 2},
         ("2026-03-28T23:30", "2026-03-29T00:30", "2026-03-29T00:50", "2026-03-29T01:10"),
         {"2026-03-29T00:50", "2026-03-29T01:10"}, BERLIN),
    Case("DST autumn: the 25-hour day is one daily bucket", {"keep_daily": 3},
         ("2026-10-24T21:30", "2026-10-24T22:30", "2026-10-25T22:30", "2026-10-25T23:30"),
         {"2026-10-24T21:30", "2026-10-25T22:30", "2026-10-25T23:30"}, BERLIN),
    Case("DST spring: the 23-hour day is one daily bucket", {"keep_daily": 3},
         ("2026-03-28T22:30", "2026-03-28T23:30", "2026-03-29T21:30", "2026-03-29T22:30"),
         {"2026-03-28T22:30", "2026-03-29T21:30", "2026-03-29T22:30"}, BERLIN),
    Case("within 2d of the newest (not of now), boundary included", {"keep_within": "2d"},
         ("2026-11-28T11:59", "2026-11-28T12:00", "2026-11-29T12:00", "2026-11-30T12:00"),
         {"2026-11-28T12:00", "2026-11-29T12:00", "2026-11-30T12:00"}),
    Case("combined: a snapshot kept by any rule stays",
         {"keep_last": 1, "keep_daily": 2, "keep_monthly": 2},
         ("2026-10-10T12:00", "2026-10-31T12:00", "2026-11-28T12:00", "2026-11-29T08:00",
          "2026-11-29T12:00", "2026-11-30T12:00"),
         {"2026-10-31T12:00", "2026-11-29T12:00", "2026-11-30T12:00"}),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bucket_rules(case: Case) -> None:
    """The kept set of each case; every snapshot gets exactly one decision."""
    decisions = apply_policy([at(t) for t in case.times], policy(**case.rules), case.zone)
    assert {d.id for d in decisions if d.keep} == case.kept
    assert sorted(d.id for d in decisions) == sorted(case.times)
    assert all(bool(d.reasons) == d.keep for d in decisions)


def test_reasons_name_every_rule_and_bucket() -> None:
    """Reasons say which rule and which calendar bucket keeps a snapshot."""
    times = ("2026-10-31T12:00", "2026-11-29T12:00", "2026-11-30T12:00")
    decisions = {d.id: d.reasons for d in apply_policy(
        [at(t) for t in times],
        policy(keep_last=1, keep_daily=2, keep_monthly=2, keep_within="1d"), "UTC")}
    assert decisions["2026-11-30T12:00"] == ("last", "daily 2026-11-30", "monthly 2026-11",
                                             "within 1d")
    assert decisions["2026-11-29T12:00"] == ("daily 2026-11-29", "within 1d")
    assert decisions["2026-10-31T12:00"] == ("monthly 2026-10",)


def test_repeated_autumn_hour_buckets_carry_their_offset() -> None:
    """The two 02:xx hours of 25 Oct 2026 in Berlin are told apart by their UTC offset."""
    decisions = apply_policy([at("2026-10-25T00:45"), at("2026-10-25T01:45")],
                             policy(keep_hourly=5), BERLIN)
    assert [d.reasons for d in decisions] == [("hourly 2026-10-25T02+0100",),
                                              ("hourly 2026-10-25T02+0200",)]


def test_newest_verified_is_kept_whatever_the_rules_say() -> None:
    times = ("2026-11-01T10:00", "2026-11-02T10:00", "2026-11-03T10:00")
    decisions = {d.id: d.reasons for d in apply_policy(
        [at(t) for t in times], policy(keep_last=1), "UTC", newest_verified=times[0])}
    assert decisions == {times[0]: ("newest verified",), times[1]: (),
                         times[2]: ("last",)}


def test_newest_snapshot_is_kept_by_every_single_rule() -> None:
    """Whatever one rule is set, the newest snapshot survives (its stat cache is reused)."""
    times = [at(t) for t in ("2026-11-01T10:00", "2026-11-30T10:00")]
    for rules in ({"keep_last": 1}, {"keep_hourly": 1}, {"keep_daily": 1},
                  {"keep_weekly": 1}, {"keep_monthly": 1}, {"keep_yearly": 1},
                  {"keep_within": "0s"}):
        decisions = apply_policy(times, policy(**rules), BERLIN)
        assert decisions[0].id == "2026-11-30T10:00" and decisions[0].keep, rules


def test_policy_keeping_nothing_is_refused_naming_the_keys() -> None:
    """All keep_* 0 and no keep_within never means 'delete everything'."""
    with pytest.raises(RefusedError) as caught:
        apply_policy([at("2026-11-01T10:00")], policy(), "UTC")
    message = caught.value.one_line()
    assert "\n" not in message
    assert "retention.keep_last" in message and "retention.keep_within" in message


def test_keep_within_alone_is_a_policy() -> None:
    decisions = apply_policy([at("2026-11-01T10:00"), at("2026-11-30T10:00")],
                             policy(keep_within="1w"), "UTC")
    assert [d.keep for d in decisions] == [True, False]


def test_no_snapshots_no_decisions() -> None:
    assert apply_policy([], policy(keep_last=3), "UTC") == []
