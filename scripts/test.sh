#!/usr/bin/env bash
# Runs walsink's whole test suite (unit tests and the integration tests against real PostgreSQL) on this
# machine, installing missing dependencies first. Extra arguments go to the test runner, e.g. a filter:
#   scripts/test.sh harness_selftest
#   scripts/test.sh --pg 13                 # against PostgreSQL 13 (installed by scripts/install-pg-majors.sh)
#   scripts/test.sh --pg 18 -E 'binary(integration)'
# Uses cargo-nextest (profile "ci" from .config/nextest.toml) when installed, else cargo test.
# As root, the PostgreSQL test servers run as the unprivileged user walsink_pg, created on first use.
#
# --pg MAJOR installs that major's binaries (and 18's client tools, which servers built without psql,
# pg_basebackup and pg_receivewal borrow) under $WALSINK_PG_ROOT (default /opt/walsink-pg) and sets
# WALSINK_PG_BINDIR and WALSINK_PG_CLIENT_BINDIR. Without it, the servers come from WALSINK_PG_BINDIR if set,
# else the highest /usr/lib/postgresql/*/bin.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/install-deps.sh

if [ "${1:-}" = --pg ]; then
    major=${2:?--pg needs a major version, e.g. --pg 13}
    shift 2
    root=${WALSINK_PG_ROOT:-/opt/walsink-pg}
    scripts/install-pg-majors.sh "$major" 18
    export WALSINK_PG_BINDIR=$root/$major/bin
    export WALSINK_PG_CLIENT_BINDIR=$root/18/bin
    echo "test.sh: PostgreSQL $major: WALSINK_PG_BINDIR=$WALSINK_PG_BINDIR WALSINK_PG_CLIENT_BINDIR=$WALSINK_PG_CLIENT_BINDIR"
fi

if cargo nextest --version >/dev/null 2>&1; then
    echo "test.sh: cargo nextest run --workspace --profile ci $*"
    exec cargo nextest run --workspace --profile ci "$@"
else
    echo "test.sh: cargo-nextest not installed; cargo test --workspace $*"
    exec cargo test --workspace "$@"
fi
