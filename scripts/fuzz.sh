#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for a fixed time each, one after the other, niced, and prints
# per target: seconds, executions, coverage (cov, ft), corpus size and crashes.
#   scripts/fuzz.sh [SECONDS] [TARGET...]        (default 600 seconds, every [[bin]] in fuzz/Cargo.toml)
# Needs a nightly toolchain and cargo-fuzz (`rustup toolchain install nightly; cargo install cargo-fuzz`).
# CI does not run this: it replays the committed corpora as an ordinary test (tests/fuzz_corpus.rs).
#
# Each run starts from fuzz/corpus/<target>/ and fuzz/regressions/<target>/ and writes what it finds to
# target/fuzz/corpus/<target>/ (not committed: copy the few inputs worth keeping into fuzz/corpus/), its log
# to target/fuzz/logs/<target>.log and crashing inputs to target/fuzz/artifacts/<target>/. libFuzzer runs in
# fork mode with crashes, timeouts and OOMs ignored, so one crash does not end the run; they are counted.
# Minimize a crash with `cargo +nightly fuzz tmin --sanitizer none --debug-assertions <target> <file>`
# (from fuzz/), then add it to fuzz/regressions/<target>/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

secs=${1:-600}
shift || true
if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(awk '/^\[\[bin\]\]/ {b=1; next} b && /^name = / {gsub(/"/, "", $3); print $3; b=0}' fuzz/Cargo.toml)
fi
flags=(--sanitizer none --debug-assertions)
nice=${FUZZ_NICE:-15}

(cd fuzz && nice -n "$nice" cargo +nightly fuzz build "${flags[@]}")

mkdir -p target/fuzz/logs
summary=()
for t in "${targets[@]}"; do
    work=$root/target/fuzz/corpus/$t
    artifacts=$root/target/fuzz/artifacts/$t
    log=$root/target/fuzz/logs/$t.log
    mkdir -p "$work" "$artifacts" "$root/fuzz/regressions/$t"
    echo "fuzz.sh: $t for ${secs}s, log $log" >&2
    start=$(date +%s)
    (cd fuzz && nice -n "$nice" cargo +nightly fuzz run "${flags[@]}" "$t" \
        "$work" "$root/fuzz/corpus/$t" "$root/fuzz/regressions/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
        -fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 \
        -artifact_prefix="$artifacts/") >"$log" 2>&1 || true
    took=$(($(date +%s) - start))
    # The last fork-mode status line: "#N: cov: C ft: F corp: K exec/s E oom/timeout/crash: O/T/X time: ...".
    last=$(grep -E '^#[0-9]+: cov:' "$log" | tail -1 || true)
    execs=$(sed -E 's/^#([0-9]+):.*/\1/' <<<"$last")
    cov=$(sed -E 's/.* cov: ([0-9]+) .*/\1/' <<<"$last")
    ft=$(sed -E 's/.* ft: ([0-9]+) .*/\1/' <<<"$last")
    otc=$(sed -E 's|.* oom/timeout/crash: ([0-9/]+).*|\1|' <<<"$last")
    corp=$(find "$work" -type f | wc -l)
    found=$(find "$artifacts" -type f | wc -l)
    summary+=("$(printf '%-20s %6s %12s %6s %7s %7s %15s %9s' "$t" "$took" "${execs:-?}" "${cov:-?}" "${ft:-?}" "$corp" "${otc:-?}" "$found")")
done
printf '%-20s %6s %12s %6s %7s %7s %15s %9s\n' target seconds execs cov ft corpus oom/tmout/crash artifacts
printf '%s\n' "${summary[@]}"
