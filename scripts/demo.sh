#!/usr/bin/env bash
# The main job on the embedded default: a local repository and sample wicked data.
#
#   ./scripts/demo.sh [USERS]      (default 2000 users, about 10 000 files)
#
# Creates .venv with wicked-dr when missing, generates demo/volume, then runs what the daemon
# runs: a full backup, an incremental one after 1 % of files changed, check --read-data, a
# restore into demo/restore compared with the volume, a tar export, prune --dry-run, and
# the daemon itself for a moment (/readyz, /metrics, SIGTERM). Safe to re-run.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
USERS="${1:-2000}"
DEMO="$REPO_ROOT/demo"
say() { printf '\ndemo: %s\n' "$*"; }

if [[ ! -x .venv/bin/wicked-dr ]]; then
    if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
        [[ "$(id -u)" == 0 ]] && apt-get update -qq && \
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    fi
    say "creating .venv and installing wicked-dr"
    [[ -x .venv/bin/python ]] || python3 -m venv .venv
    .venv/bin/python -m pip install --disable-pip-version-check -q -e .
fi
WDR=(.venv/bin/wicked-dr --config "$DEMO/config.yaml")

mkdir -p "$DEMO"
sed "s#\./demo#$DEMO#g" config/demo.yaml >"$DEMO/config.yaml"
if [[ ! -f "$DEMO/volume/meta.json" ]]; then
    say "generating sample wicked data ($USERS users) in demo/volume"
    .venv/bin/python bench/gen_volume.py "$DEMO/volume" --users "$USERS"
fi

say "full backup (first run) or incremental backup"
"${WDR[@]}" backup
say "1 % of the files change, as portal-api would change them"
.venv/bin/python bench/gen_volume.py "$DEMO/volume" --mutate 0.01 --seed "$RANDOM"
say "incremental backup"
"${WDR[@]}" backup
say "snapshots"
"${WDR[@]}" snapshots
say "check --read-data (every pack downloaded and verified)"
"${WDR[@]}" check --read-data
say "restore latest into demo/restore and compare with the volume"
rm -rf "$DEMO/restore"
"${WDR[@]}" restore latest --target "$DEMO/restore"
diff -r "$DEMO/volume" "$DEMO/restore" && echo "demo: restored tree is identical to the volume"
say "export latest as a plain tar"
"${WDR[@]}" export latest --tar "$DEMO/latest.tar"
tar -tf "$DEMO/latest.tar" | wc -l | xargs echo "demo: entries in demo/latest.tar:"
say "prune --dry-run: what the retention policy (retention.*) would remove"
"${WDR[@]}" prune --dry-run
say "the daemon for a moment: /readyz and /metrics answer, then SIGTERM stops it (exit 0)"
"${WDR[@]}" -q daemon &
DAEMON_PID=$!
.venv/bin/python - <<'PY'
import time, urllib.request, urllib.error
base = "http://127.0.0.1:19464"
for _ in range(300):
    try:
        with urllib.request.urlopen(base + "/readyz", timeout=2) as answer:
            print("demo: /readyz", answer.status, answer.read().decode())
            break
    except (urllib.error.URLError, OSError):
        time.sleep(0.1)
else:
    raise SystemExit("demo: the daemon never became ready")
with urllib.request.urlopen(base + "/metrics", timeout=5) as answer:
    for line in answer.read().decode().splitlines():
        if line.startswith(("wicked_dr_repository_snapshots", "wicked_dr_data_age_seconds",
                            "wicked_dr_lease_held")):
            print("demo:", line)
PY
kill -TERM "$DAEMON_PID"
wait "$DAEMON_PID" && echo "demo: the daemon stopped cleanly"
say "done: repository in demo/repository, config in demo/config.yaml"
