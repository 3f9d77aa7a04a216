"""Human-readable renderings of action results (``--json`` prints the raw result instead)."""

from __future__ import annotations

from typing import Any


def render(command: str, result: Any) -> str:
    """Text for a terminal."""
    if result is None:
        return ""
    if command == "snapshots":
        return _snapshots(result)
    if command == "backup":
        return (f"snapshot {result['snapshot']}: {result['files']} files, "
                f"{_size(result['bytes_read'])} read, {_size(result['bytes_new'])} new, "
                f"{result['errors']} unreadable, wicked locked for {result['lock_window_s']} s,"
                f" {result['duration_s']} s in all")
    if command == "init":
        state = "created" if result["created"] else "already exists, left as it is"
        key = f"encrypted, key id {result['key_id']}" if result["encrypted"] else "not encrypted"
        return f"repository {result['repo_id']} at {result['repository']}: {state} ({key})"
    if command == "check":
        problems = result["problems"]
        found = f"{len(problems)} problem(s)" if problems else "no problems"
        lines = [f"{result['snapshots']} snapshots, {result['packs']} packs, "
                 f"{result['packs_read']} packs read: {found}"]
        lines += [f"problem: {p['object']}: {p['message']}" for p in problems]
        lines += [f"warning: {w}" for w in result["warnings"]]
        return "\n".join(lines)
    if command == "verify":
        return _verify(result)
    if command == "drill":
        return _drills(result["drills"]) if "drills" in result else _drill(result)
    if command == "verify-data":
        return _verify_data(result)
    if command == "repair":
        return _REPAIRS[result["action"]](result)
    if command == "prune":
        return _prune(result)
    if command == "restore" and isinstance(result, dict) and result.get("mode") == "target":
        return _restore_target(result)
    if command == "restore" and isinstance(result, dict) and result.get("mode") == "live":
        return render_live(result)
    if command == "kong-resync":
        detail = result["detail"]
        changes = f", {detail['changes']} change(s) to Kong" if "changes" in detail else ""
        return (f"Kong Adapter at {result['adapter']}: {result['method']}{changes}, healthy "
                f"after {result['duration_s']} s (seen: {', '.join(detail.get('ping', []))})")
    if command == "restore" and isinstance(result, dict) and "kong_restarts" in result:
        return _restore_with_restarts(dict(result))
    return _mapping(result)


def render_plan(plan: dict[str, Any]) -> str:
    """What restore --live is about to do (shown before the confirmation)."""
    lines = [f"restore --live of snapshot {plan['snapshot']}",
             f"  taken        {plan['taken']} UTC ({_age(plan['age_s'])} ago)",
             f"  content      {plan['files']} files, {_size(plan['bytes'])}; verification: "
             f"{plan['verification']}",
             f"  tokens       {'restored after the rebuild' if plan['tokens'] else 'not restored'}"]
    for name, guard in plan["sources"].items():
        lines.append(f"  {name:<12} {guard.get('volume', '')} (swap: {guard.get('swap')}, "
                     f"staged in {guard.get('workspace')})")
    lines += [f"  {key:<12} {how}" for key, how in plan["containers"].items()]
    return "\n".join(lines)


def render_live(result: dict[str, Any]) -> str:
    """The restore --live report."""
    if result["dry_run"]:
        return render_plan(result["plan"]) + "\n(dry run: nothing changed)"
    lines = [f"restore {result['restore_id']} of snapshot {result['snapshot']}: "
             f"{result['outcome']} in {result['total_s']} s (data age "
             f"{_age(result['data_age_s'])})"]
    for step in result["steps"]:
        state = "ok" if step.get("ok") else f"FAILED: {step.get('error')}"
        lines.append(f"  {step['step']:<26} {step.get('seconds', 0):>8.1f} s  {state}")
    if result.get("portal_api_healthy_after_s") is not None:
        lines.append(f"portal-api healthy after {result['portal_api_healthy_after_s']} s")
    if result.get("tokens"):
        lines.append(f"tokens: {_brief(result['tokens'])}")
    if result.get("pre_restore_copy"):
        lines.append(f"pre-restore copy: {result['pre_restore_copy']}")
    lines += [f"TO DO: {f}" for f in result["follow_up"]]
    lines += [f"check: {c}" for c in result["next_checks"]]
    if result.get("report_file"):
        lines.append(f"report: {result['report_file']}")
    return "\n".join(lines)


def _brief(tokens: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in tokens.items()
                     if isinstance(v, (int, str)) and k != "next_step")


def _age(seconds: float) -> str:
    minutes = int(seconds // 60)
    if minutes < 120:
        return f"{minutes} min"
    hours = minutes // 60
    return f"{hours} h {minutes % 60} min" if hours < 48 else f"{hours // 24} d {hours % 24} h"


def _verify_data(result: dict[str, Any]) -> str:
    problems, warnings = result["problems"], result["warnings"]
    against = f" against {result['manifest']}" if result["manifest"] else ""
    lines = [f"{result['directory']}{against}: {result['files_checked']} files checked in "
             f"{result['duration_s']} s: "
             + (f"{len(problems)} problem(s)" if problems else "no problems")
             + f", {len(warnings)} warning(s)"]
    lines += [f"problem: {p}" for p in problems]
    lines += [f"warning: {w}" for w in warnings]
    return "\n".join(lines)


def _restore_target(result: dict[str, Any]) -> str:
    verb = "would restore" if result["dry_run"] else "restored"
    lines = [f"{verb} snapshot {result['snapshot']} into {result['target']}"]
    for name, written in result["sources"].items():
        if "files" in written:
            lines.append(f"  {name}: {written['files']} files, {written.get('dirs', 0)} dirs, "
                         f"{written.get('symlinks', 0)} symlinks, "
                         f"{_size(written.get('bytes', 0))}")
        else:
            where = f" -> {written['path']}" if "path" in written else ""
            lines.append(f"  {name}: {_size(written.get('bytes', 0))}{where}")
    if not result["dry_run"]:
        lines.append(f"{result['packs_fetched']} packs fetched, {result['duration_s']} s")
    return "\n".join(lines)


def _restore_with_restarts(result: dict[str, Any]) -> str:
    rows = result.pop("kong_restarts")
    lines = [_mapping(result)]
    for r in rows:
        done = (f"restarted, {r['state']} after {r['seconds']} s" if r["restarted"]
                else f"left {r['state']}")
        lines.append(f"kong node {r['name']}: {done}")
    return "\n".join(lines)


def _verify(result: dict[str, Any]) -> str:
    verdict = "verified" if result["ok"] else "FAILED"
    lines = [f"snapshot {result['snapshot']}: {verdict} in {result['duration_s']} s"]
    for probe in result["probes"]:
        state = "ok" if probe["ok"] else "FAILED"
        lines.append(f"  {probe['name']}: {state} ({probe['duration_s']} s)")
        lines += [f"    problem: {p}" for p in probe["problems"]]
        lines += [f"    warning: {w}" for w in probe["warnings"]]
    return "\n".join(lines)


def _drill(result: dict[str, Any]) -> str:
    r = result["report"]
    verdict = "passed" if r["ok"] else "FAILED"
    lines = [f"drill {r['id']}: {verdict}; snapshot {r['snapshot']}",
             f"  RTO (data path) {r['rto_s']} s, data age {r['data_age_s']} s, largest gap "
             f"between snapshots {r['rpo_gap_s']} s, {r['files']} files, {_size(r['bytes'])}"]
    lines += [f"  {p['name']}: {'ok' if p['ok'] else 'FAILED'}" for p in r["probes"]]
    lines += [f"  report: {path}" for path in result["files"]]
    return "\n".join(lines)


_DRILL_COLUMNS = ("DRILL", "SNAPSHOT", "RESULT", "RTO S", "DATA AGE S", "GAP S")


def _drills(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no drills yet (run 'wicked-dr drill')"
    cells = [[str(r["id"]), str(r["snapshot"]), "passed" if r["ok"] else "FAILED",
              f"{r['rto_s']:.1f}", f"{r['data_age_s']:.0f}", f"{r['rpo_gap_s']:.0f}"]
             for r in rows]
    return _table(_DRILL_COLUMNS, cells)


def _repair_index(result: dict[str, Any]) -> str:
    if not result["changed"]:
        return (f"index: {result['packs_indexed']} packs, all listed correctly "
                f"({result['packs_read']} read): nothing to repair")
    verb = "would rebuild" if result["dry_run"] else "rebuilt"
    lines = [f"index {verb}: {result['packs_indexed']} packs ({result['packs_read']} read)"]
    lines += [f"  pack {p}: stored but in no index; added" for p in result["packs_added"]]
    lines += [f"  pack {p}: missing or damaged; left out" for p in result["packs_dropped"]]
    lines += [f"  index object {i}: unreadable; replaced"
              for i in result["index_objects_unreadable"]]
    if not result["dry_run"]:
        lines.append(f"{result['index_objects_written']} index object(s) written, "
                     f"{result['index_objects_removed']} removed")
    return "\n".join(lines)


def _lost(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for row in rows:
        lines.append(f"  snapshot {row['snapshot']}: {row['reason']}")
        lines += [f"    {path}" for path in row["files"]]
        more = row["files_lost"] - len(row["files"])
        if more > 0:
            lines.append(f"    ... and {more} more")
    return lines


def _repair_snapshots(result: dict[str, Any]) -> str:
    rows = result["damaged"]
    if not rows:
        return "every snapshot's data is there: nothing to repair"
    lines = [f"{len(rows)} snapshot(s) whose data is gone:", *_lost(rows)]
    if result["forgotten"]:
        lines.append("forgotten (removed from the repository)")
    else:
        lines.append("run 'wicked-dr repair snapshots --forget' to remove them")
    return "\n".join(lines)


def _repair_packs(result: dict[str, Any]) -> str:
    lines = [f"damage record of pack {p} removed: the pack reads intact"
             for p in result["records_cleared"]]
    if not result["packs"]:
        return "\n".join([*lines, "no damaged pack: nothing to repair"])
    verb = "would drop" if result["dry_run"] else "dropped"
    lines.append(f"{verb} {len(result['packs'])} damaged pack(s): {', '.join(result['packs'])}")
    if result["snapshots_losing_data"]:
        lines.append("files lost with them:")
        lines += _lost(result["snapshots_losing_data"])
    lines.append(f"next: {result['next_step']}")
    return "\n".join(lines)


def _prune(result: dict[str, Any]) -> str:
    """Every kept snapshot with its reasons, the forgotten ones, and what the packs cost."""
    dry = result["dry_run"]
    lines = [f"prune{' (dry run, nothing deleted)' if dry else ''}: {len(result['kept'])} "
             f"snapshot(s) kept, {len(result['removed'])} forgotten"]
    lines += [f"keep   {sid}  {', '.join(result['reasons'].get(sid, []))}"
              for sid in result["kept"]]
    lines += [f"forget {sid}" for sid in result["removed"]]
    into = "" if dry else f" into {result['packs_written']} new"
    lines.append(f"packs: {'would delete' if dry else 'deleted'} {result['packs_deleted']} "
                 f"({result['packs_repacked']} of them repacked{into}), "
                 f"{_size(result['bytes_deleted'])}; trees: {result['trees_deleted']}; "
                 f"{result['duration_s']} s")
    return "\n".join(lines)


_REPAIRS = {"index": _repair_index, "snapshots": _repair_snapshots, "packs": _repair_packs}

_SNAPSHOT_COLUMNS = ("ID", "TIME (UTC)", "FILES", "SIZE", "VERIFICATION", "SOURCES")
_RIGHT_ALIGNED = {"FILES", "SIZE", "RTO S", "DATA AGE S", "GAP S"}


def _snapshots(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no snapshots"
    cells = [[str(r["id"]), str(r["time"]), str(r["files"]), _size(r["bytes"]),
              str(r["verification"]), ",".join(r["sources"])]
             for r in rows]
    return _table(_SNAPSHOT_COLUMNS, cells)


def _table(header: tuple[str, ...], rows: list[list[str]]) -> str:
    """Columns as wide as their widest cell (ids grow with their format), two spaces apart."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = []
    for row in [list(header), *rows]:
        cells = [cell.rjust(width) if name in _RIGHT_ALIGNED else cell.ljust(width)
                 for name, cell, width in zip(header, row, widths, strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _mapping(result: Any, indent: str = "") -> str:
    if not isinstance(result, dict):
        return f"{indent}{result}"
    lines = []
    for key, value in result.items():
        if isinstance(value, dict):
            lines.append(f"{indent}{key}:")
            lines.append(_mapping(value, indent + "  "))
        else:
            lines.append(f"{indent}{key}: {value}")
    return "\n".join(lines)


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"
