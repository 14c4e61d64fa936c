#!/usr/bin/env bash
# What WAL validation costs at ingest, measured directly (issue 12: at most 0.1 CPU-s/GiB): writes GIB GiB
# of WAL on a throwaway primary as benches/throughput.sh does (1 MiB logical messages), copies its completed
# segments, and runs the example crates/wal/examples/ingest_cost.rs on them: the WAL cut into 128 KiB
# messages (the server's MAX_SEND_SIZE), each copied into a receive buffer, validated or not, alternately,
# REPS times, CPU of the thread itself. For the many-small-records case run the example on an archive
# kept by `KEEP=1 benches/verify.sh`:
#   cargo run --release -p walsink-wal --example ingest_cost -- /tmp/walverify.XXXXXX/archive 7
#
# usage: GIB=1 REPS=7 benches/ingest-cost.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
GIB=${GIB:-1}
REPS=${REPS:-7}
source benches/lib.sh

cargo build --release -q -p walsink-wal --example ingest_cost
ROOT=$(mktemp -d /tmp/walcost.XXXXXX)
chmod 755 "$ROOT"
PORT=$(free_port)
cleanup() {
    stop_cluster "$ROOT" immediate
    rm -rf "$ROOT"
}
trap cleanup EXIT
start_cluster "$ROOT" "$PORT" -c fsync=off -c max_wal_size=64GB -c wal_keep_size=64GB
psql_() { psql_at "$ROOT/sock" "$PORT" "$@"; }
pregenerate_wal psql_ "$GIB"
install -d "$ROOT/wal"
for f in $(psql_ -c "SELECT name FROM pg_ls_waldir() WHERE name ~ '^[0-9A-F]{24}$' AND name >= pg_walfile_name('$START') AND name < pg_walfile_name('$END') ORDER BY name"); do
    cp "$ROOT/data/pg_wal/$f" "$ROOT/wal/"
done
echo "==> $SEGS segments of 1 MiB logical messages ($START .. $END); load: $(uptime)"
target/release/examples/ingest_cost "$ROOT/wal" "$REPS"
echo "load: $(uptime)"
