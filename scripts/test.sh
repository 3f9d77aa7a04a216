#!/usr/bin/env bash
# THE test command: prepares the machine, then lint, type check and the whole pytest suite.
#
#   ./scripts/test.sh                      everything
#   ./scripts/test.sh tests/unit           a subset (extra arguments go to pytest)
#   ./scripts/test.sh -k sha256 -x         any pytest options
#
# Every step runs even when an earlier one failed, so one run shows all problems; the exit
# code is non-zero when any step failed. pytest collecting no test at all (exit 5) is a
# failure too: a suite that ran nothing proved nothing.
set -uo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT" || exit 1

bash scripts/test-env.sh || { echo "test: test environment could not be prepared" >&2; exit 1; }
# The project's own programs first: a child process that runs `wicked-dr` gets the one this
# checkout installed, never another copy that happens to be on the machine's PATH.
export PATH="$REPO_ROOT/.venv/bin:$PATH"

failed=()
step() {
    local name="$1"
    shift
    local started=$SECONDS
    echo "test: --- $name"
    "$@"
    local code=$?
    echo "test: --- $name: exit $code in $((SECONDS - started))s"
    if [[ "$name" == pytest && "$code" == 5 ]]; then
        echo "test: pytest collected no tests; that counts as a failure" >&2
    fi
    ((code == 0)) || failed+=("$name")
}

step ruff .venv/bin/ruff check wicked_dr tests bench
step mypy .venv/bin/mypy --strict wicked_dr
# --durations: the slowest tests show in every log, so the 15-minute budget stays visible.
step pytest .venv/bin/pytest -q --durations=10 "$@"

if ((${#failed[@]})); then
    echo "test: FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "test: all steps passed"
