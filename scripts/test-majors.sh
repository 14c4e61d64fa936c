#!/usr/bin/env bash
# Runs the integration suite against each PostgreSQL major in turn (default 13 14 15 16 17 18), installing
# the binaries first (scripts/install-pg-majors.sh), and prints a table: major, exact server version, passed,
# failed, skipped, wall time. Extra arguments after `--` go to nextest (e.g. a filter). Needs cargo-nextest.
#   scripts/test-majors.sh                  # the whole matrix (about 2 min per major on an idle 2-core machine)
#   scripts/test-majors.sh 13 18 -- tap::   # two majors, one module
# Each run's full output goes to target/test-majors/<major>.log. Exits non-zero if any run failed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

majors=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do majors+=("$1"); shift; done
[ "${1:-}" = -- ] && shift
[ ${#majors[@]} -gt 0 ] || majors=(13 14 15 16 17 18)

root=${WALSINK_PG_ROOT:-/opt/walsink-pg}
scripts/install-deps.sh >/dev/null
# 18's client tools serve the majors whose builds lack them.
scripts/install-pg-majors.sh $(printf '%s\n' "${majors[@]}" 18 | sort -un)
logs=target/test-majors
mkdir -p "$logs"
rows=()
status=0
for major in "${majors[@]}"; do
    version=$("$root/$major/bin/postgres" --version | awk '{print $3}')
    echo "test-majors: PostgreSQL $version ..."
    start=$(date +%s)
    rc=0
    WALSINK_PG_BINDIR=$root/$major/bin WALSINK_PG_CLIENT_BINDIR=$root/18/bin \
        cargo nextest run --profile ci --test integration "$@" >"$logs/$major.log" 2>&1 || rc=$?
    secs=$(($(date +%s) - start))
    # nextest's summary: "Summary [ 91.2s] 75 tests run: 74 passed (1 slow), 1 failed, 0 skipped"
    summary=$(grep -E '^ *Summary \[' "$logs/$major.log" | tail -n 1 || true)
    count() { grep -oE "[0-9]+ $1" <<<"$summary" | head -n 1 | cut -d" " -f1 | grep . || echo 0; }
    rows+=("| $major | $version | $(count passed) | $(count failed) | $(count skipped) | ${secs} s |")
    if [ "$rc" -ne 0 ]; then
        status=1
        grep -E '^ +FAIL ' "$logs/$major.log" | sort -u | sed "s/^/test-majors: $major: /" || true
    fi
done
echo
echo "| major | version | passed | failed | skipped | wall time |"
echo "|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
exit "$status"
