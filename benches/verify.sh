#!/usr/bin/env bash
# Archive verification speed: `walsink verify` against `pg_waldump` (which also checks every record's
# CRC), side by side in one run, over the same archive, on one core.
#
# Starts a throwaway primary (16 MiB segments), writes about GIB GiB of ordinary WAL (heap and index
# inserts of small rows, full-page images after checkpoints, updates, commits: many small records, the
# hard case for a checker), streams it into an archive with walsink (-E at the end), then times, REPS
# times alternately, reading from the page cache (one untimed pass of each first), each pinned to CPU 0
# (taskset) but the first, which uses every CPU (one thread per CPU, as by default):
#   walsink verify -D ARCHIVE                 (page headers and CRC of every record, continuity, names)
#   walsink verify -j 1 -D ARCHIVE            (the same on one thread)
#   pg_waldump -q -p ARCHIVE FIRST LAST       (decodes and CRC-checks every record, prints nothing)
#   pg_waldump -p ARCHIVE FIRST LAST >/dev/null  (its usual output)
# and prints medians of wall time, GiB/s and CPU seconds, and the ratios.
#
# usage: benches/verify.sh              (1 GiB, 5 repetitions)
#   GIB=2 REPS=3 benches/verify.sh
# Needs: PostgreSQL server binaries (scripts/install-deps.sh), GNU time, taskset, cargo.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

GIB=${GIB:-1}
REPS=${REPS:-5}
source benches/lib.sh
need_gnu_time

build_walsink

bench_root walverify
cleanup() {
    stop_cluster "$ROOT" immediate
    # KEEP=1 keeps the archive (for profiling: perf record target/release/walsink verify -D ROOT/archive).
    if [ "${KEEP:-0}" = 1 ]; then echo "kept $ROOT/archive"; else rm -rf "$ROOT"; fi
}
trap cleanup EXIT

echo "==> starting primary on 127.0.0.1:$PORT ($ROOT)"
start_cluster "$ROOT" "$PORT" -c fsync=off -c shared_buffers=512MB -c max_wal_size=64GB \
    -c autovacuum=off -c wal_keep_size=64GB
psql_() { psql_at "$ROOT/sock" "$PORT" "$@"; }

echo "==> writing about $GIB GiB of WAL"
psql_ -c "SELECT pg_create_physical_replication_slot('bench', true)" >/dev/null
START=$(psql_ -c "SELECT pg_current_wal_lsn()")
psql_ -c "CREATE TABLE t (id bigint PRIMARY KEY, a int, b text)" >/dev/null
target=$(python3 -c "print(int(float('$GIB') * 2**30))")
i=0
while :; do
    done_bytes=$(psql_ -c "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '$START')::bigint")
    [ "$done_bytes" -ge "$target" ] && break
    psql_ -c "INSERT INTO t SELECT g, g % 1000, md5(g::text) FROM generate_series($i * 200000 + 1, ($i + 1) * 200000) g" >/dev/null
    psql_ -c "CHECKPOINT" >/dev/null
    psql_ -c "UPDATE t SET a = a + 1 WHERE id % 17 = $((i % 17)) AND id > $i * 200000 - 400000" >/dev/null
    i=$((i + 1))
done
END=$(psql_ -c "SELECT pg_current_wal_lsn()")

echo "==> streaming it into an archive with walsink"
ARCH=$ROOT/archive
install -d -m 700 "$ARCH"
"$WALSINK" receive -D "$ARCH" -d "host=127.0.0.1 port=$PORT user=postgres" -S bench -E "$END" --no-loop \
    >"$ROOT/receive.log" 2>&1 || { cat "$ROOT/receive.log" >&2; exit 1; }
FIRST=$(ls "$ARCH" | grep -E '^[0-9A-F]{24}$' | sort | head -1)
LAST=$(ls "$ARCH" | grep -E '^[0-9A-F]{24}$' | sort | tail -1)
BYTES=$(du -bc "$ARCH"/[0-9A-F]* | tail -1 | cut -f1)
NSEG=$(ls "$ARCH" | grep -cE '^[0-9A-F]{24}')
echo "    WAL $START .. $END; archive: $NSEG files ($FIRST .. $LAST and a .partial), $BYTES bytes"

run() { # label, command...
    local label=$1
    shift
    local cpus=0
    [ "$label" = walsink ] && cpus=0-$(($(nproc) - 1))
    /usr/bin/time -f "%e %U %S" -o "$ROOT/time" taskset -c "$cpus" "$@" >"$ROOT/out" 2>"$ROOT/err" || {
        local rc=$?
        # pg_waldump exits 1 at the end of the WAL in the last (partial) file it is given; walsink verify
        # must exit 0.
        if [ "${label%% *}" = walsink ]; then echo "walsink verify failed ($rc):" >&2; cat "$ROOT/out" "$ROOT/err" >&2; exit 1; fi
    }
    read -r wall user sys <"$ROOT/time"
    printf '%s\t%s\t%s\t%s\n' "$label" "$wall" "$user" "$sys" >>"$ROOT/results.tsv"
}

: >"$ROOT/results.tsv"
verify_cmd=("$WALSINK" verify -D "$ARCH")
verify_one=("$WALSINK" verify -j 1 -D "$ARCH")
waldump_q=("$PGBIN/pg_waldump" -q -p "$ARCH" "$FIRST" "$LAST")
waldump_out=(sh -c "exec '$PGBIN/pg_waldump' -p '$ARCH' '$FIRST' '$LAST' >/dev/null")
# Warm the page cache (untimed).
"${verify_cmd[@]}" >/dev/null
"${waldump_q[@]}" >/dev/null 2>&1 || true
: >"$ROOT/results.tsv"
for rep in $(seq 1 "$REPS"); do
    run walsink "${verify_cmd[@]}"
    run "walsink -j 1" "${verify_one[@]}"
    run "pg_waldump -q" "${waldump_q[@]}"
    run "pg_waldump" "${waldump_out[@]}"
    echo "    rep $rep done"
done
grep -q "OK: the archive is valid" "$ROOT/out" 2>/dev/null || true
"${verify_cmd[@]}" | tail -3

python3 - "$ROOT/results.tsv" "$BYTES" "$(nproc)" <<'PY'
import sys, statistics
rows = [l.split("\t") for l in open(sys.argv[1]).read().splitlines()]
nbytes = int(sys.argv[2]); gib = nbytes / 2**30
stats = {}
for label, wall, user, sys_ in rows:
    s = stats.setdefault(label, {"wall": [], "cpu": []})
    s["wall"].append(float(wall))
    s["cpu"].append(float(user) + float(sys_))
med = statistics.median
print(f"\nArchive: {gib:.2f} GiB of WAL; medians of {len(stats['walsink']['wall'])} runs [min-max]; walsink on all {sys.argv[3]} CPUs, the others pinned to one\n")
print("| checker | wall s | GiB/s | CPU s | CPU-s/GiB |")
print("|---|---|---|---|---|")
for label, s in stats.items():
    w = med(s["wall"])
    print(f"| {label} | {w:.2f} [{min(s['wall']):.2f}-{max(s['wall']):.2f}] | {gib / w:.2f} | {med(s['cpu']):.2f} | {med(s['cpu']) / gib:.2f} |")
ws = med(stats["walsink"]["wall"])
print()
for label in stats:
    if label != "walsink":
        print(f"walsink verify is {med(stats[label]['wall']) / ws:.1f}x faster than {label} (wall time), uses {med(stats[label]['cpu']) / med(stats['walsink']['cpu']):.2f}x less CPU")
PY
