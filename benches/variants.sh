#!/usr/bin/env bash
# walsink variants against each other (and pg_receivewal) over the same pre-generated WAL,
# alternating in one run, byte-verified like benches/throughput.sh. For before/after
# comparisons on a noisy machine, where only runs side by side in one run compare.
#
# usage: VARIANTS="label:binary[:ENV=V,ENV=V] ..." MODE=default|synchronous GIB=0.5 REPS=3 benches/variants.sh
#   e.g. VARIANTS="buffered:target/release/walsink direct:target/release/walsink:WALSINK_BENCH_DIRECT=1"
# The WALSINK_BENCH_* variables are read by the binary only (bin/walsink/src/cli.rs, bench_write_options).
# Prints a Markdown table: medians [min-max], and ratios to pg_receivewal.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
GIB=${GIB:-0.5}; REPS=${REPS:-3}; MODE=${MODE:-default}
source benches/lib.sh
need_gnu_time
bench_root walab
cleanup() { stop_cluster "$ROOT" immediate; rm -rf "$ROOT"; }
trap cleanup EXIT
start_cluster "$ROOT" "$PORT" -c fsync=on -c shared_buffers=1GB -c wal_buffers=64MB -c max_wal_size=64GB \
    -c max_wal_senders=10 -c max_replication_slots=40 -c autovacuum=off
psql_() { psql_at "$ROOT/sock" "$PORT" "$@"; }
pregenerate_wal psql_ "$GIB"
echo "mode $MODE, $BYTES bytes"
res=$ROOT/res.tsv; : >"$res"; run=0
for _ in $(seq 1 "$REPS"); do
  for v in $VARIANTS pg_receivewal; do
    run=$((run+1)); slot=r$run; dir=$ROOT/d$run; install -d -m 700 "$dir"
    psql_ -c "SELECT pg_copy_physical_replication_slot('guard', '$slot')" >/dev/null
    flags=(); [ "$MODE" = synchronous ] && flags=(--synchronous)
    if [ "$v" = pg_receivewal ]; then label=pg_receivewal; cmd=("$PGBIN/pg_receivewal"); envs=()
    else IFS=: read -r label bin envstr <<<"$v"; cmd=("$bin" receive); IFS=, read -r -a envs <<<"${envstr:-}"; fi
    sync
    env "${envs[@]}" /usr/bin/time -f "%e %U %S %M" -o "$ROOT/t$run" "${cmd[@]}" -D "$dir" \
      -d "host=127.0.0.1 port=$PORT user=postgres" -S "$slot" -E "$END" --no-loop "${flags[@]}" >"$ROOT/o$run" 2>&1 || { cat "$ROOT/o$run"; exit 1; }
    got=0
    for f in "$dir"/*; do b=$(basename "$f"); [[ $b =~ ^[0-9A-F]{24}$ ]] || continue
      cmp -s "$f" "$ROOT/data/pg_wal/$b" || { echo "$label: $b differs" >&2; exit 1; }; got=$((got+1)); done
    [ "$got" -ge "$SEGS" ] || { echo "$label: $got < $SEGS segments" >&2; exit 1; }
    psql_ -c "SELECT pg_drop_replication_slot('$slot')" >/dev/null; rm -rf "$dir"
    read -r wall user sys rss <"$ROOT/t$run"
    printf '%s\t%s\t%s\t%s\t%s\n' "$label" "$wall" "$user" "$sys" "$rss" >>"$res"
  done
done
python3 - "$res" "$BYTES" <<'PY'
import sys, statistics as st
rows=[l.split("\t") for l in open(sys.argv[1]).read().splitlines()]; n=int(sys.argv[2]); gib=n/2**30; mib=n/2**20
d={}
for lab,w,u,s,r in rows:
    x=d.setdefault(lab,{"m":[],"c":[],"r":[],"u":[],"s":[]}); x["m"].append(mib/float(w)); x["c"].append((float(u)+float(s))/gib); x["r"].append(int(r)/1024)
    x["u"].append(float(u)/gib); x["s"].append(float(s)/gib)
p=d["pg_receivewal"]
print(f"| variant | MiB/s | CPU-s/GiB (user+sys) | user/sys per GiB | RSS MiB | ×pg MiB/s | ×pg CPU |")
print("|---|---|---|---|---|---|---|")
for lab,x in d.items():
    print(f"| {lab} | {st.median(x['m']):.0f} [{min(x['m']):.0f}-{max(x['m']):.0f}] | {st.median(x['c']):.2f} [{min(x['c']):.2f}-{max(x['c']):.2f}] | {st.median(x['u']):.2f}/{st.median(x['s']):.2f} | {st.median(x['r']):.1f} | {st.median(x['m'])/st.median(p['m']):.2f} | {st.median(x['c'])/st.median(p['c']):.2f} |")
PY
