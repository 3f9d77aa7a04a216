"""The human renderings: the snapshot table keeps its columns aligned whatever the ids."""

from __future__ import annotations

from typing import Any

from wicked_dr.report import render

ROWS: list[dict[str, Any]] = [
    {"id": "20261126T051500.123456Z-3fa2c1d0", "time": "2026-11-26T05:15:00.123456+00:00",
     "files": 96237, "bytes": 54_321_234, "verified": True, "verification": "verified",
     "sources": ["volume"]},
    {"id": "20261126T051500Z-0a1b2c3d", "time": "2026-11-26T05:15:00+00:00",
     "files": 7, "bytes": 10, "verified": False, "verification": "failed",
     "sources": ["kong_tokens", "volume"]},
    {"id": "20261127T000000.000001Z-ffffffff", "time": "2026-11-27T00:00:00.000001+00:00",
     "files": 1_234_567_890, "bytes": 5 * 1024**4, "verified": False, "verification": "unverified",
     "sources": ["volume"]},
]


def _sources(row: dict[str, Any]) -> str:
    return ",".join(row["sources"])


def test_snapshots_table_columns_line_up_with_the_header() -> None:
    """Every cell starts (left-aligned) or ends (right-aligned) where its header does, with
    at least one space before the next column, for ids longer than the old fixed width."""
    lines = render("snapshots", ROWS).splitlines()
    header, body = lines[0], lines[1:]
    assert len(body) == len(ROWS)
    starts = {name: header.index(name) for name in ("ID", "TIME (UTC)", "VERIFICATION", "SOURCES")}
    ends = {name: header.index(name) + len(name) for name in ("FILES", "SIZE")}
    size_texts = ["51.8 MiB", "10 B", "5120.0 GiB"]
    for line, row, size in zip(body, ROWS, size_texts, strict=True):
        assert line.startswith(row["id"] + " ")
        assert line[starts["TIME (UTC)"]:].startswith(row["time"] + " ")
        assert line[:ends["FILES"]].endswith(" " + str(row["files"]))
        assert line[:ends["SIZE"]].endswith(" " + size)
        assert line[starts["VERIFICATION"]:].startswith(row["verification"] + " ")
        assert line[starts["SOURCES"]:] == _sources(row)


def test_snapshots_table_no_trailing_spaces() -> None:
    """No line carries trailing spaces (the last column is as wide as its widest cell)."""
    lines = render("snapshots", ROWS).splitlines()
    assert all(line == line.rstrip() for line in lines)


def test_snapshots_empty_says_so() -> None:
    """No rows: one line saying there are no snapshots."""
    assert render("snapshots", []) == "no snapshots"


def test_restore_target_human_summary_one_line_per_source() -> None:
    """restore --target reads as: what went where, one line per source, then the cost."""
    result = {"mode": "target", "dry_run": False, "snapshot": "S1", "target": "/t",
              "packs_fetched": 2, "duration_s": 1.5,
              "sources": {"volume": {"files": 3, "dirs": 1, "symlinks": 0, "bytes": 2048},
                          "kong_tokens": {"bytes": 10, "path": "/t/kong_tokens.stream"}}}
    assert render("restore", result).splitlines() == [
        "restored snapshot S1 into /t",
        "  volume: 3 files, 1 dirs, 0 symlinks, 2.0 KiB",
        "  kong_tokens: 10 B -> /t/kong_tokens.stream",
        "2 packs fetched, 1.5 s"]
