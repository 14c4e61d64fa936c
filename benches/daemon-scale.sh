#!/usr/bin/env bash
# `walsink run` at scale: many sources in one daemon against one PostgreSQL cluster.
#
# 1. Idle: a daemon with 1 source, then one with N (default 50) sources, each on its own slot of one
#    primary, all streaming and idle. For each: RSS (VmRSS, VmHWM), threads, and over IDLE_SECS the
#    CPU seconds and context switches (wake-ups: voluntary + involuntary, from
#    /proc/PID/task/*/status) of all the daemon's threads, also by thread class (the thread's name,
#    digits at its end dropped); per source figures are (N-source daemon - 1-source daemon) / (N - 1).
# 2. All receiving: the N-source daemon receives LIVE_MIB of fresh WAL on every source (N x LIVE_MIB
#    written); peak RSS (VmHWM) after it, every completed segment compared with pg_wal; then RSS once
#    idle again, SETTLE_SECS later (past the daemon's 30 s malloc_trim).
# 3. Throughput: ACTIVE (default 4) sources in one daemon against ACTIVE separate `walsink receive`
#    processes, each streaming the same pre-generated GIB GiB from its own copy of a guard slot;
#    wall time until every archive has every segment (polled every 50 ms, the same for both), CPU and
#    peak RSS (from /proc), REPS repetitions alternating; every segment byte-compared with pg_wal.
#
# usage: benches/daemon-scale.sh  (N=50, IDLE_SECS=30, LIVE_MIB=32, SETTLE_SECS=35, ACTIVE=4, GIB=1, REPS=3)
#   N=10 IDLE_SECS=10 GIB=0.25 REPS=1 benches/daemon-scale.sh
#   N=0 GIB=1 REPS=7 benches/daemon-scale.sh      (throughput only)
#   N=50 IDLE_SECS=30 REPS=0 benches/daemon-scale.sh (idle and receiving only)
#   WALSINK=/path/to/walsink ...                  (that binary instead of building this tree's)
#   BASE=/path/to/other/walsink ...               (throughput: a third variant, that binary's daemon)
# Needs: PostgreSQL server binaries (scripts/install-deps.sh), cargo.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

N=${N:-50}
IDLE_SECS=${IDLE_SECS:-30}
LIVE_MIB=${LIVE_MIB:-32}
SETTLE_SECS=${SETTLE_SECS:-35}
ACTIVE=${ACTIVE:-4}
GIB=${GIB:-1}
REPS=${REPS:-3}
source benches/lib.sh

if [ -n "${WALSINK:-}" ]; then
    echo "==> using $WALSINK"
else
    build_walsink
fi

ROOT=$(mktemp -d /tmp/walscale.XXXXXX)
chmod 755 "$ROOT"
PORT=$(free_port)
DAEMON_PID=
cleanup() {
    [ -n "$DAEMON_PID" ] && kill -9 "$DAEMON_PID" 2>/dev/null || true
    stop_cluster "$ROOT" immediate
    rm -rf "$ROOT"
}
trap cleanup EXIT

echo "==> starting primary on 127.0.0.1:$PORT ($ROOT)"
senders=$((N + ACTIVE * 2 + 10))
start_cluster "$ROOT" "$PORT" -c fsync=on -c shared_buffers=512MB -c wal_buffers=64MB -c max_wal_size=64GB \
    -c max_wal_senders=$senders -c max_replication_slots=$senders -c max_connections=$((senders + 20)) \
    -c autovacuum=off
psql_() { psql_at "$ROOT/sock" "$PORT" "$@"; }
CONN="host=127.0.0.1 port=$PORT user=postgres"

# write_config FILE FIRST LAST [extra key lines]: sources sFIRST..sLAST on slots sFIRST..sLAST.
write_config() {
    local file=$1 first=$2 last=$3 extra=${4:-} i
    : >"$file"
    for ((i = first; i <= last; i++)); do
        install -d -m 700 "$ROOT/arch/s$i"
        printf '[[source]]\nname = "s%d"\nconninfo = "%s application_name=s%d"\ndirectory = "%s"\nslot = "s%d"\n%s\n' \
            "$i" "$CONN" "$i" "$ROOT/arch/s$i" "$i" "$extra" >>"$file"
    done
}
streaming() { psql_ -c "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' AND application_name LIKE 's%'"; }
wait_streaming() {
    local want=$1 t=0
    until [ "$(streaming)" -ge "$want" ]; do
        sleep 0.2
        t=$((t + 1))
        [ $t -lt 600 ] || { echo "only $(streaming) of $want sources streaming" >&2; tail -20 "$ROOT/daemon.log" >&2; exit 1; }
    done
}
# ticks PID: utime+stime of the whole process, in clock ticks.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# snap PID FILE: one line per thread: tid, name, voluntary + involuntary context switches (one
# process reads them all, quickly).
snap() {
    python3 - "$1" >"$2" <<'PY'
import os, sys
base = f"/proc/{sys.argv[1]}/task"
for tid in os.listdir(base):
    try:
        name = open(f"{base}/{tid}/comm").read().strip()
        sw = sum(int(l.split()[1]) for l in open(f"{base}/{tid}/status") if "ctxt_switches" in l)
    except OSError:
        continue
    print(f"{tid}\t{name}\t{sw}")
PY
}
# snap_diff FILE0 FILE1: the context switches over the window of every thread alive at its end (a thread
# started during the window counts from 0; one that ended, a blocking-pool thread, is left out).
snap_diff() { awk -F'\t' 'NR == FNR {a[$1] = $3; next} {s += $3 - a[$1]} END {print s}' "$1" "$2"; }
status_kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
HZ=$(getconf CLK_TCK)

# idle_run K: a daemon with sources s1..sK, all streaming and idle; prints "rss_kib hwm_kib threads cpu_s switches"
# and leaves the threads' context switches at the start and end of the window in $ROOT/idle_K.{0,1}.
idle_run() {
    local k=$1
    write_config "$ROOT/idle_$k.toml" 1 "$k"
    "$WALSINK" run -c "$ROOT/idle_$k.toml" >"$ROOT/daemon.log" 2>&1 &
    DAEMON_PID=$!
    wait_streaming "$k"
    sleep 3 # the first status updates, segment preparation
    local t0 t1
    t0=$(ticks $DAEMON_PID)
    snap $DAEMON_PID "$ROOT/idle_$k.0"
    sleep "$IDLE_SECS"
    t1=$(ticks $DAEMON_PID)
    snap $DAEMON_PID "$ROOT/idle_$k.1"
    echo "$(status_kib $DAEMON_PID VmRSS) $(status_kib $DAEMON_PID VmHWM) $(ls /proc/$DAEMON_PID/task | wc -l) $(python3 -c "print(($t1-$t0)/$HZ)") $(snap_diff "$ROOT/idle_$k.0" "$ROOT/idle_$k.1")"
}

idle_summary=
if [ "$N" -gt 0 ]; then
    for i in $(seq 1 "$N"); do
        psql_ -c "SELECT pg_create_physical_replication_slot('s$i', true)" >/dev/null
    done

    echo "==> idle: 1 source, then $N sources, ${IDLE_SECS}s each"
    idle_run 1 >"$ROOT/idle_1.out"
    read -r rss1 hwm1 thr1 cpu1 sw1 <"$ROOT/idle_1.out"
    kill -TERM "$DAEMON_PID"; wait "$DAEMON_PID" || true; DAEMON_PID=
    idle_run "$N" >"$ROOT/idle_n.out"
    read -r rssn hwmn thrn cpun swn <"$ROOT/idle_n.out"
    echo "==> all $N receiving: $LIVE_MIB MiB of new WAL each"
    start_lsn=$(psql_ -c "SELECT pg_current_wal_lsn()")
    psql_ -c "CREATE TABLE live AS SELECT decode(repeat(md5('x'), 32768), 'hex') AS b" >/dev/null
    psql_ -c "SELECT count(pg_logical_emit_message(false, 'live', b)) FROM live, generate_series(1, $((LIVE_MIB * 2)))" >/dev/null
    psql_ -c "SELECT pg_switch_wal()" >/dev/null
    end_lsn=$(psql_ -c "SELECT pg_current_wal_lsn()")
    live_segs=$(psql_ -c "SELECT count(*) FROM pg_ls_waldir() WHERE name ~ '^[0-9A-F]{24}$' AND name >= pg_walfile_name('$start_lsn') AND name < pg_walfile_name('$end_lsn')")
    # Every source has every segment up to the switch, or the run fails.
    live_last=$(psql_ -c "SELECT pg_walfile_name('$end_lsn'::pg_lsn - 1)")
    for i in $(seq 1 "$N"); do
        t=0
        until [ -f "$ROOT/arch/s$i/$live_last" ]; do
            sleep 0.2
            t=$((t + 1))
            [ $t -lt 900 ] || { echo "source s$i did not archive $live_last" >&2; exit 1; }
        done
    done
    checked=0
    for i in $(seq 1 "$N"); do
        for f in "$ROOT/arch/s$i"/*; do
            b=$(basename "$f")
            [[ $b =~ ^[0-9A-F]{24}$ ]] || continue
            [ -f "$ROOT/data/pg_wal/$b" ] || continue
            cmp -s "$f" "$ROOT/data/pg_wal/$b" || { echo "s$i: $b differs from pg_wal" >&2; exit 1; }
            checked=$((checked + 1))
        done
    done
    hwm_live=$(status_kib $DAEMON_PID VmHWM)
    rss_live=$(status_kib $DAEMON_PID VmRSS)
    echo "==> idle again: RSS after ${SETTLE_SECS}s"
    sleep "$SETTLE_SECS"
    rss_settled=$(status_kib $DAEMON_PID VmRSS)
    kill -TERM "$DAEMON_PID"; wait "$DAEMON_PID" || true; DAEMON_PID=
    for i in $(seq 1 "$N"); do psql_ -c "SELECT pg_drop_replication_slot('s$i')" >/dev/null; done
    rm -rf "$ROOT/arch"
    idle_summary="$rss1 $hwm1 $thr1 $cpu1 $sw1|$rssn $hwmn $thrn $cpun $swn|$rss_live $hwm_live $rss_settled|$checked"
fi

results="$ROOT/throughput.tsv"
: >"$results"
if [ "$REPS" -gt 0 ]; then
    echo "==> throughput: $ACTIVE sources in one daemon vs $ACTIVE walsink receive processes, $GIB GiB each"
    pregenerate_wal psql_ "$GIB"
    echo "    WAL $START .. $END: $BYTES bytes, $SEGS segments"
    LAST_SEG=$(psql_ -c "SELECT pg_walfile_name('$END'::pg_lsn - 1)")
    # all_done: every archive of this run has its last segment completed.
    all_done() {
        local i
        for ((i = 1; i <= ACTIVE; i++)); do [ -f "$ROOT/arch/s$i/$LAST_SEG" ] || return 1; done
    }
    for rep in $(seq 1 "$REPS"); do
        for variant in daemon processes ${BASE:+base}; do
            rm -rf "$ROOT/arch"
            for ((i = 1; i <= ACTIVE; i++)); do
                psql_ -c "SELECT pg_copy_physical_replication_slot('guard', 's$i')" >/dev/null
            done
            sync
            t0=$(date +%s.%N)
            pids=()
            if [ $variant != processes ]; then
                write_config "$ROOT/tp.toml" 1 "$ACTIVE"
                bin=$WALSINK
                [ $variant = daemon ] || bin=$BASE
                "$bin" run -c "$ROOT/tp.toml" >"$ROOT/daemon.log" 2>&1 &
                pids=($!)
            else
                for ((i = 1; i <= ACTIVE; i++)); do
                    install -d -m 700 "$ROOT/arch/s$i"
                    "$WALSINK" receive -D "$ROOT/arch/s$i" -d "$CONN application_name=s$i" -S "s$i" >"$ROOT/p$i.log" 2>&1 &
                    pids+=($!)
                done
            fi
            until all_done; do sleep 0.05; done
            t1=$(date +%s.%N)
            # CPU (whole process) and peak RSS, read before stopping them.
            cpu=0
            rss=0
            for p in "${pids[@]}"; do
                cpu=$(python3 -c "print($cpu + $(ticks "$p") / $HZ)")
                rss=$((rss + $(status_kib "$p" VmHWM)))
            done
            for p in "${pids[@]}"; do kill -INT "$p"; done
            for p in "${pids[@]}"; do wait "$p" || true; done
            for ((i = 1; i <= ACTIVE; i++)); do
                got=0
                for f in "$ROOT/arch/s$i"/*; do
                    b=$(basename "$f")
                    [[ $b =~ ^[0-9A-F]{24}$ ]] || continue
                    [[ "$b" > "$LAST_SEG" ]] && continue
                    cmp -s "$f" "$ROOT/data/pg_wal/$b" || { echo "$variant s$i: $b differs from pg_wal" >&2; exit 1; }
                    got=$((got + 1))
                done
                [ "$got" -ge "$SEGS" ] || { echo "$variant s$i: $got segments, expected $SEGS" >&2; exit 1; }
                psql_ -c "SELECT pg_drop_replication_slot('s$i')" >/dev/null
            done
            wall=$(python3 -c "print($t1 - $t0)")
            printf '%s\t%s\t%s\t%s\n' "$variant" "$wall" "$cpu" "$rss" >>"$results"
            printf '    rep %d %-9s %6.2f s  %7.1f MiB/s aggregate  cpu %5.2f s  peak RSS %6.1f MiB (sum)\n' "$rep" "$variant" \
                "$wall" "$(python3 -c "print($ACTIVE*$BYTES/1048576/$wall)")" "$cpu" "$(python3 -c "print($rss/1024)")"
        done
    done
fi

python3 - "$results" "${BYTES:-0}" "$ACTIVE" "$N" "$IDLE_SECS" "$LIVE_MIB" "$SETTLE_SECS" "$idle_summary" "$ROOT" <<'PY'
import sys, statistics, re, collections
res, nbytes, active, n, idle, live, settle, idle_summary, root = sys.argv[1:10]
nbytes, active, n, idle = int(nbytes), int(active), int(n), float(idle)
mib = lambda kib: kib / 1024
med = statistics.median

def classes(k):
    """Context switches per thread class over the window of the k-source daemon; a thread that
    started during the window counts from 0, one that ended is missing (both rare while idle)."""
    def read(f):
        out = {}
        for line in open(f):
            tid, name, sw = line.rstrip("\n").split("\t")
            out[tid] = (re.sub(r"[-_]?\d+$", "", name) or name, int(sw or 0))
        return out
    a, b = read(f"{root}/idle_{k}.0"), read(f"{root}/idle_{k}.1")
    sw, threads = collections.Counter(), collections.Counter()
    for tid, (name, v) in b.items():
        sw[name] += v - a.get(tid, (name, 0))[1]
        threads[name] += 1
    return sw, threads

if idle_summary:
    one_s, many_s, live_s, checked = idle_summary.split("|")
    one = [float(x) for x in one_s.split()]
    many = [float(x) for x in many_s.split()]
    rss_live, hwm_live, rss_settled = [float(x) for x in live_s.split()]
    per = lambda a, b: (b - a) / (n - 1) if n > 1 else float("nan")
    print(f"\n## Idle ({idle:.0f} s window, status_interval 10 s)\n")
    print("| daemon | RSS MiB | peak RSS MiB | threads | CPU s | CPU % | wake-ups/s |")
    print("|---|---|---|---|---|---|---|")
    for label, v in (("1 source", one), (f"{n} sources", many)):
        print(f"| {label} | {mib(v[0]):.1f} | {mib(v[1]):.1f} | {v[2]:.0f} | {v[3]:.2f} | {100*v[3]/idle:.2f} | {v[4]/idle:.1f} |")
    print(f"| per extra source | {mib(per(one[0], many[0])):.2f} | {mib(per(one[1], many[1])):.2f} | {per(one[2], many[2]):.1f} "
          f"| {per(one[3], many[3]):.4f} | | {per(one[4], many[4])/idle:.3f} |")
    base = mib(one[0]) - mib(per(one[0], many[0]))
    print(f"\nbase (1-source daemon less one source): {base:.1f} MiB; target: <= 2 MiB per idle source above a 16 MiB base "
          f"-> {n} sources <= {16 + 2*n} MiB; measured {mib(many[0]):.1f} MiB")
    (sw1, th1), (swn, thn) = classes(1), classes(n)
    print(f"\n### Wake-ups by thread class (context switches per second over the window)\n")
    print(f"| thread class | threads (1 / {n}) | 1 source /s | {n} sources /s | per extra source /s |")
    print("|---|---|---|---|---|")
    for name in sorted(set(sw1) | set(swn), key=lambda c: -swn.get(c, 0)):
        print(f"| {name} | {th1.get(name, 0)} / {thn.get(name, 0)} | {sw1.get(name, 0)/idle:.2f} | {swn.get(name, 0)/idle:.2f} "
              f"| {per(sw1.get(name, 0), swn.get(name, 0))/idle:.3f} |")
    print(f"\n## All {n} receiving {live} MiB each\n\nRSS {mib(rss_live):.1f} MiB, peak RSS {mib(hwm_live):.1f} MiB "
          f"({mib(hwm_live)/n:.2f} MiB per source); {checked} segments byte-identical; "
          f"idle again {settle} s later: RSS {mib(rss_settled):.1f} MiB ({mib(rss_settled)/n:.2f} MiB per source)")

rows = [l.split("\t") for l in open(res).read().splitlines()]
if rows:
    st = {}
    for variant, wall, cpu, rss in rows:
        s = st.setdefault(variant, {"mibs": [], "cpu": [], "rss": []})
        s["mibs"].append(active * nbytes / 2**20 / float(wall))
        s["cpu"].append(float(cpu) / (active * nbytes / 2**30))
        s["rss"].append(int(rss) / 1024)
    print(f"\n## Throughput: {active} sources x {nbytes/2**30:.2f} GiB; medians of {len(st['daemon']['mibs'])} runs [min-max]\n")
    print("| receivers | aggregate MiB/s | CPU-s/GiB | peak RSS MiB (sum) |")
    print("|---|---|---|---|")
    for v, label in (("daemon", f"1 `walsink run`, {active} sources"), ("processes", f"{active} `walsink receive`"),
                     ("base", f"1 `walsink run` of BASE, {active} sources")):
        if v not in st:
            continue
        s = st[v]
        print(f"| {label} | {med(s['mibs']):.0f} [{min(s['mibs']):.0f}-{max(s['mibs']):.0f}] | {med(s['cpu']):.2f} | {med(s['rss']):.1f} |")
    d, p = st["daemon"], st["processes"]
    pairs = [a / b for a, b in zip(d["mibs"], p["mibs"])]
    print(f"\ndaemon/processes: throughput {med(d['mibs'])/med(p['mibs']):.2f}x (per repetition: "
          f"{', '.join(f'{x:.2f}' for x in pairs)}; median {med(pairs):.2f}), CPU per GiB {med(d['cpu'])/med(p['cpu']):.2f}x, "
          f"peak RSS {med(d['rss']):.1f} vs {med(p['rss']):.1f} MiB")
    if "base" in st:
        b = st["base"]
        pairs = [x / y for x, y in zip(b["mibs"], p["mibs"])]
        print(f"BASE daemon/processes: throughput {med(b['mibs'])/med(p['mibs']):.2f}x (per repetition: "
              f"{', '.join(f'{x:.2f}' for x in pairs)}; median {med(pairs):.2f}), CPU per GiB {med(b['cpu'])/med(p['cpu']):.2f}x; "
              f"daemon/BASE daemon {med(d['mibs'])/med(b['mibs']):.2f}x")
PY
