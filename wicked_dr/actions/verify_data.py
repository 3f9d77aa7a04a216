"""``wicked-dr verify-data DIR``: check a restored dynamic-data directory on this host.

The work is ``wicked_dr/verify_data.py``, the standard-library-only checker that a drill
copies into a scratch volume and runs there; this action runs the same code in-process, so
the host command and the scratch container judge a directory by one set of rules. It needs
no repository and no configuration."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wicked_dr.actions.common import Result
from wicked_dr.errors import IntegrityError, UsageError
from wicked_dr.verify_data import Findings, VolumeUsageError, check_volume


@dataclass(frozen=True)
class VerifyDataResult(Result):
    """What ``verify-data --json`` prints: the checker's findings and what was checked."""

    ok: bool
    directory: str
    manifest: str | None
    files_checked: int
    problems: list[str]
    warnings: list[str]
    duration_s: float


class VerifyDataFailed(IntegrityError):
    """The directory has problems; ``result`` lists every one (the CLI prints it, exit 3)."""

    def __init__(self, result: VerifyDataResult) -> None:
        self.result = result
        super().__init__(f"verify-data found {len(result.problems)} problem(s) in "
                         f"{result.directory}: " + "; ".join(result.problems[:3]))


def run_verify_data(directory: Path, manifest: Path | None = None) -> VerifyDataResult:
    """Check ``directory`` (against ``manifest`` when given); VerifyDataFailed (exit 3) on
    problems, UsageError (exit 2) when the directory or the manifest cannot be used.
    Warnings alone are a success: they are wicked's normal untidiness."""
    try:
        findings = check_volume(directory, manifest)
    except VolumeUsageError as exc:
        raise UsageError(str(exc)) from None
    result = _result(directory, manifest, findings)
    if not result.ok:
        raise VerifyDataFailed(result)
    return result


def _result(directory: Path, manifest: Path | None, findings: Findings) -> VerifyDataResult:
    return VerifyDataResult(findings.ok, str(directory), str(manifest) if manifest else None,
                            findings.files_checked, list(findings.problems),
                            list(findings.warnings), findings.duration_s)
