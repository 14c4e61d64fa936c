#!/usr/bin/env bash
# walsink restore vs cp as restore_command: the time from process start to DEST written, for one
# 16 MiB segment, alternating the commands in one run, with ratios.
#
#   benches/restore.sh [ITERATIONS]      # default 200 of each
#
# Commands timed (each starts from an absent DEST, in the same directory, page cache warm for the source):
#   walsink    walsink restore -D ARCHIVE NAME DEST      (temp file, fdatasync, rename; PostgreSQL's durable_rename
#                                                         of the restored file fsyncs pg_wal, so walsink does not)
#   no-sync    walsink restore --no-sync ...             (temp file, rename: what cp guarantees, plus atomicity)
#   cp         cp ARCHIVE/NAME DEST                      (what restore_command = 'cp ...' does: no sync)
#   cp+sync    cp ARCHIVE/NAME DEST && sync DEST         (the same copy made durable, as walsink makes it)
# Also, with an archive of 20000 other segment names, so that a cost growing with the archive would show.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
N=${1:-200}

echo "==> building walsink (release)"
cargo build --release -q -p walsink
WALSINK=$PWD/target/release/walsink

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/walsink-restore-bench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
ARCH=$WORK/archive
BIG=$WORK/big-archive
DEST_DIR=$WORK/pg_wal
mkdir -p "$ARCH" "$BIG" "$DEST_DIR"
NAME=000000010000000000000042
head -c $((16 << 20)) /dev/urandom >"$ARCH/$NAME"
cp "$ARCH/$NAME" "$BIG/$NAME"
# 20000 more names in the big archive (empty files: only the directory's size matters here).
python3 - "$BIG" <<'PY'
import os, sys
d = sys.argv[1]
for i in range(20000):
    open(os.path.join(d, "00000001%08X%08X" % (1 + i // 256, i % 256)), "w").close()
PY
DEST=$DEST_DIR/RECOVERYXLOG

# time_us CMD...: microseconds the command took (bash's EPOCHREALTIME around it).
time_us() {
    local t0 t1
    t0=${EPOCHREALTIME/./}
    "$@"
    t1=${EPOCHREALTIME/./}
    echo $((t1 - t0))
}
cp_sync() { cp "$1" "$2" && sync "$2"; }

declare -A samples
kinds=(walsink no-sync cp cp+sync walsink-20k)
for ((i = 0; i < N; i++)); do
    for k in "${kinds[@]}"; do
        rm -f "$DEST"
        case $k in
            walsink) us=$(time_us "$WALSINK" restore -D "$ARCH" "$NAME" "$DEST") ;;
            no-sync) us=$(time_us "$WALSINK" restore --no-sync -D "$ARCH" "$NAME" "$DEST") ;;
            walsink-20k) us=$(time_us "$WALSINK" restore -D "$BIG" "$NAME" "$DEST") ;;
            cp) us=$(time_us cp "$ARCH/$NAME" "$DEST") ;;
            cp+sync) us=$(time_us cp_sync "$ARCH/$NAME" "$DEST") ;;
        esac
        cmp -s "$ARCH/$NAME" "$DEST" || { echo "$k: DEST differs from the archived segment" >&2; exit 1; }
        samples[$k]+="$us "
    done
done

echo "==> $N runs each, one 16 MiB segment, $(df -T "$WORK" | awk 'NR==2 {print $2}') at $WORK"
python3 - "${samples[walsink]}" "${samples[cp]}" "${samples[cp+sync]}" "${samples[walsink-20k]}" "${samples[no-sync]}" <<'PY'
import statistics, sys
names = ["walsink restore", "cp", "cp + sync DEST", "walsink restore, 20000-file archive", "walsink restore --no-sync"]
runs = [[int(x) for x in s.split()] for s in sys.argv[1:]]
med = [statistics.median(r) / 1000 for r in runs]
print(f"{'command':40} {'median ms':>10} {'p90 ms':>8} {'mean ms':>8}")
for n, r, m in zip(names, runs, med):
    p90 = sorted(r)[int(len(r) * 0.9)] / 1000
    print(f"{n:40} {m:10.2f} {p90:8.2f} {statistics.mean(r) / 1000:8.2f}")
print(f"ratio walsink restore / cp (median):          {med[0] / med[1]:.2f}")
print(f"ratio walsink restore / cp + sync (median):   {med[0] / med[2]:.2f}")
print(f"ratio 20000-file archive / plain (median):    {med[3] / med[0]:.2f}")
print(f"ratio walsink restore --no-sync / cp (median): {med[4] / med[1]:.2f}")
PY
