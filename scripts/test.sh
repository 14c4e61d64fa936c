#!/usr/bin/env bash
# Runs walsink's whole test suite (unit tests and the integration tests against real PostgreSQL) on this
# machine, installing missing dependencies first. Extra arguments go to the test runner as a filter, e.g.
#   scripts/test.sh harness_selftest
# Uses cargo-nextest (profile "ci" from .config/nextest.toml) when installed, else cargo test.
# As root, the PostgreSQL test servers run as the unprivileged user walsink_pg, created on first use.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/install-deps.sh

if cargo nextest --version >/dev/null 2>&1; then
    echo "test.sh: cargo nextest run --workspace --profile ci $*"
    exec cargo nextest run --workspace --profile ci "$@"
else
    echo "test.sh: cargo-nextest not installed; cargo test --workspace $*"
    exec cargo test --workspace "$@"
fi
