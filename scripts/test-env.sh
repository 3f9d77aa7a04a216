#!/usr/bin/env bash
# Make this machine ready for the test suite; safe to run again and again.
#
# Installs (only what is missing) the Debian packages the suite needs, a virtualenv at
# .venv with wicked-dr and its `test` extra, and starts the Docker engine when it is not
# answering. PostgreSQL and the S3 server are not started here: pytest fixtures start a
# throwaway cluster and a moto server per test session.
#
# Needs root on Debian bookworm (apt-get, dockerd). Prints one short line per step.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO_ROOT/.venv"
APT_PACKAGES=(docker.io mmdebstrap postgresql zstd restic python3-venv make git)
DOCKERD_LOG=/var/log/wicked-dr-dockerd.log
DOCKERD_WAIT_S=60
# Stored in the venv, so a fresh clone (CI) or a deleted .venv always reinstalls.
INSTALL_STAMP="$VENV/.wicked-dr-pyproject.sha256"

say() { printf 'test-env: %s\n' "$*"; }
die() { printf 'test-env: ERROR: %s\n' "$*" >&2; exit 1; }

[[ "$(id -u)" == 0 ]] || die "run as root (apt-get and dockerd need it)"

# --- Debian packages ---------------------------------------------------------------------
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    status="$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)"
    [[ "$status" == "install ok installed" ]] || missing+=("$pkg")
done
if ((${#missing[@]})); then
    say "installing apt packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    say "apt packages present"
fi

# --- Python virtualenv -------------------------------------------------------------------
# First interpreter >= 3.11 that can make a venv; pyenv's shim comes first on PATH when
# present, Debian's /usr/bin/python3 (PEP 668, python3-venv from above) is the fallback.
find_python() {
    local candidate
    for candidate in python3 python3.13 python3.12 python3.11 /usr/bin/python3; do
        command -v "$candidate" >/dev/null 2>&1 || continue
        if "$candidate" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' \
            >/dev/null 2>&1; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

# A venv whose interpreter vanished (pyenv version removed) is rebuilt, not patched.
if [[ -d "$VENV" ]] && ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    say "removing broken virtualenv $VENV"
    rm -rf "$VENV"
fi
if [[ ! -x "$VENV/bin/python" ]]; then
    python="$(find_python)" || die "no python3 >= 3.11 with venv support found"
    say "creating virtualenv with $python ($("$python" --version 2>&1))"
    "$python" -m venv "$VENV"
fi

want_hash="$(sha256sum "$REPO_ROOT/pyproject.toml" | cut -d' ' -f1)"
have_hash="$(cat "$INSTALL_STAMP" 2>/dev/null || true)"
if [[ "$want_hash" != "$have_hash" ]]; then
    say "installing wicked-dr[test] into .venv (pyproject.toml changed or first run)"
    # PIP_* from a developer's shell (e.g. --user) must not leak into the venv install.
    # The filter drops pip's warnings about find-links folders a machine's pip.conf names
    # but does not have; real errors still reach stderr.
    env -u PIP_USER -u PIP_TARGET -u PIP_PREFIX \
        "$VENV/bin/python" -m pip install --disable-pip-version-check -q -e "$REPO_ROOT[test]" \
        2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
    printf '%s\n' "$want_hash" >"$INSTALL_STAMP"
else
    say "virtualenv up to date"
fi

# --- Docker engine -----------------------------------------------------------------------
# No bridge and no iptables: scratch containers run with network none, and the few that
# answer HTTP use host networking bound to 127.0.0.1, so the engine needs no NAT rules.
if docker info >/dev/null 2>&1; then
    say "docker engine running"
else
    if pgrep -x dockerd >/dev/null 2>&1; then
        say "dockerd already starting, waiting for it"
    else
        say "starting dockerd (log: $DOCKERD_LOG)"
        # setsid + nohup: the engine outlives this script and the shell that ran it.
        setsid nohup dockerd --bridge=none --iptables=false >>"$DOCKERD_LOG" 2>&1 </dev/null &
    fi
    deadline=$((SECONDS + DOCKERD_WAIT_S))
    until docker info >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            tail -n 20 "$DOCKERD_LOG" >&2 2>/dev/null || true
            die "docker engine did not answer within ${DOCKERD_WAIT_S}s; see $DOCKERD_LOG"
        fi
        sleep 1
    done
    say "docker engine ready"
fi

say "ready"
