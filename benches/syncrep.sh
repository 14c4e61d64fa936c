#!/usr/bin/env bash
# What a synchronous standby costs the primary: pgbench TPS and latency on a primary whose
# synchronous_standby_names names (a) nobody, (b) pg_receivewal --synchronous, (c) walsink
# --synchronous, (d) a real streaming standby. The cases alternate within each repetition.
#
# usage: benches/syncrep.sh                 (30 s per case, 3 repetitions, scale 10, 8 clients)
#   DURATION=10 REPS=1 benches/syncrep.sh
#   SYSCALLS=1 CASES="pg_receivewal walsink" benches/syncrep.sh
#   PERF=1 CASES="pg_receivewal walsink" benches/syncrep.sh   (perf record -e cpu-clock of each receiver: the
#                                        symbols its CPU time goes to, user and kernel)
#                                       (also counts each receiver's system calls per transaction, all
#                                        threads, with strace -c: where the CPU per commit goes; strace
#                                        slows the receiver, so TPS and CPU of such a run are not comparable)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DURATION=${DURATION:-30}
REPS=${REPS:-3}
SCALE=${SCALE:-10}
CLIENTS=${CLIENTS:-8}
CASES=${CASES:-"none pg_receivewal walsink standby"}
source benches/lib.sh

build_walsink

bench_root walsyncrep
SPORT=$(free_port)
RECEIVER_PID=
cleanup() {
    [ -n "$RECEIVER_PID" ] && kill -9 "$RECEIVER_PID" 2>/dev/null || true
    stop_cluster "$ROOT/standby" immediate
    stop_cluster "$ROOT/primary" immediate
    rm -rf "$ROOT"
}
trap cleanup EXIT
psql_() { psql_at "$ROOT/primary/sock" "$PORT" "$@"; }

echo "==> primary on 127.0.0.1:$PORT, fsync on, synchronous_commit on"
start_cluster "$ROOT/primary" "$PORT" -c fsync=on -c synchronous_commit=on -c shared_buffers=256MB \
    -c max_wal_size=4GB -c max_wal_senders=10 -c max_replication_slots=10
"$PGBIN/pgbench" -q -i -s "$SCALE" -h "$ROOT/primary/sock" -p "$PORT" -U postgres postgres >/dev/null 2>&1
psql_ -c "SELECT pg_create_physical_replication_slot('bench_pgrw', true)" >/dev/null
psql_ -c "SELECT pg_create_physical_replication_slot('bench_walsink', true)" >/dev/null
psql_ -c "SELECT pg_create_physical_replication_slot('bench_walsink_z', true)" >/dev/null

echo "==> real standby on 127.0.0.1:$SPORT (pg_basebackup -R)"
server_dir "$ROOT/standby" "$ROOT/standby/sock"
"${RUNAS[@]}" "$PGBIN/pg_basebackup" -c fast -D "$ROOT/standby/data" -R -X stream -h "$ROOT/primary/sock" -p "$PORT" -U postgres \
    -d "application_name=bench_standby" >/dev/null
echo "primary_conninfo = 'host=$ROOT/primary/sock port=$PORT user=postgres application_name=bench_standby'" |
    "${RUNAS[@]}" tee -a "$ROOT/standby/data/postgresql.auto.conf" >/dev/null
install -d -m 700 "$ROOT/arch_pgrw" "$ROOT/arch_walsink" "$ROOT/arch_walsink_z"

set_sync_names() {
    psql_ -c "ALTER SYSTEM SET synchronous_standby_names = '$1'" -c "SELECT pg_reload_conf()" >/dev/null
}

# Starts the receiver of a case and waits until the primary lists it as the sync standby.
start_case() {
    case $1 in
        none) set_sync_names ''; return ;;
        pg_receivewal)
            "$PGBIN/pg_receivewal" -D "$ROOT/arch_pgrw" -S bench_pgrw --synchronous \
                -d "host=$ROOT/primary/sock port=$PORT user=postgres application_name=bench_pgrw" 2>"$ROOT/pgrw.log" &
            RECEIVER_PID=$!; set_sync_names bench_pgrw; name=bench_pgrw ;;
        walsink)
            "$WALSINK" receive -D "$ROOT/arch_walsink" -S bench_walsink --synchronous \
                -d "host=$ROOT/primary/sock port=$PORT user=postgres application_name=bench_walsink" 2>"$ROOT/walsink.log" &
            RECEIVER_PID=$!; set_sync_names bench_walsink; name=bench_walsink ;;
        walsink_alt)
            # Another walsink build, for before/after comparisons: WALSINK_ALT=/path/to/walsink.
            "${WALSINK_ALT:?set WALSINK_ALT to a walsink binary}" receive -D "$ROOT/arch_walsink_z" -S bench_walsink_z --synchronous \
                -d "host=$ROOT/primary/sock port=$PORT user=postgres application_name=bench_walsink_z" 2>"$ROOT/walsink_z.log" &
            RECEIVER_PID=$!; set_sync_names bench_walsink_z; name=bench_walsink_z ;;
        walsink_zeros)
            # The same, with segments zero-filled ahead instead of fallocated (an fdatasync
            # after writing into unwritten extents also commits their conversion).
            WALSINK_BENCH_PREFILL=zeros "$WALSINK" receive -D "$ROOT/arch_walsink_z" -S bench_walsink_z --synchronous \
                -d "host=$ROOT/primary/sock port=$PORT user=postgres application_name=bench_walsink_z" 2>"$ROOT/walsink_z.log" &
            RECEIVER_PID=$!; set_sync_names bench_walsink_z; name=bench_walsink_z ;;
        standby)
            start_cluster "$ROOT/standby" "$SPORT" -c hot_standby=on
            set_sync_names bench_standby; name=bench_standby ;;
    esac
    for _ in $(seq 1 200); do
        [ "$(psql_ -c "SELECT count(*) FROM pg_stat_replication WHERE application_name = '$name' AND sync_state = 'sync'")" = 1 ] && return
        sleep 0.1
    done
    echo "case $1: $name never became the synchronous standby" >&2
    exit 1
}

stop_case() {
    case $1 in
        none) ;;
        standby) stop_cluster "$ROOT/standby" fast ;;
        *) kill -INT "$RECEIVER_PID"; wait "$RECEIVER_PID" || { echo "case $1: receiver exited with $?" >&2; exit 1; }; RECEIVER_PID= ;;
    esac
    set_sync_names ''
}

# CPU seconds (user+sys, all threads) and context switches of a process so far.
proc_utime() { [ -n "$1" ] && [ -r "/proc/$1/stat" ] && awk -v hz="$(getconf CLK_TCK)" '{ printf "%.3f", $14 / hz }' "/proc/$1/stat" || echo 0; }
proc_cpu() { [ -n "$1" ] && [ -r "/proc/$1/stat" ] && awk -v hz="$(getconf CLK_TCK)" '{ printf "%.3f", ($14 + $15) / hz }' "/proc/$1/stat" || echo 0; }
proc_csw() { { [ -n "$1" ] && cat /proc/"$1"/task/*/status 2>/dev/null || true; } | awk '/_ctxt_switches/ { n += $2 } END { print n + 0 }'; }
# The walsender of a case, and the process receiving for it (the standby's walreceiver).
walsender_pid() { psql_ -c "SELECT pid FROM pg_stat_replication WHERE application_name = '$1'"; }
receiver_pid() {
    case $1 in
        none) echo ;;
        standby) psql_at "$ROOT/standby/sock" "$SPORT" -c "SELECT pid FROM pg_stat_wal_receiver" ;;
        *) echo "$RECEIVER_PID" ;;
    esac
}

results="$ROOT/results.tsv"
: >"$results"
for rep in $(seq 1 "$REPS"); do
    for c in $CASES; do
        start_case "$c"
        rpid=$(receiver_pid "$c"); spid=
        [ "$c" = none ] || spid=$(walsender_pid "$name")
        r0=$(proc_cpu "$rpid"); u0=$(proc_utime "$rpid"); s0=$(proc_cpu "$spid"); x0=$(proc_csw "$rpid")
        tracer=
        if [ "${SYSCALLS:-0}" = 1 ] && [ -n "$rpid" ] && [ "$c" != standby ]; then
            strace -f -c -o "$ROOT/strace.$c.$rep" $(ls /proc/"$rpid"/task | sed 's/^/-p /') 2>/dev/null &
            tracer=$!
            sleep 0.5
        elif [ "${PERF:-0}" = 1 ] && [ -n "$rpid" ] && [ "$c" != standby ]; then
            perf record -q -e cpu-clock -F 4999 -g -o "$ROOT/perf.$c.$rep" -p "$rpid" 2>/dev/null &
            tracer=$!
            sleep 0.5
        fi
        out=$("$PGBIN/pgbench" -n -c "$CLIENTS" -j 2 -T "$DURATION" -M prepared -h "$ROOT/primary/sock" -p "$PORT" -U postgres postgres 2>&1)
        tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$out")
        lat=$(sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' <<<"$out")
        [ -n "$tps" ] || { echo "pgbench failed: $out" >&2; exit 1; }
        txns=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out")
        r1=$(proc_cpu "$rpid"); u1=$(proc_utime "$rpid"); s1=$(proc_cpu "$spid"); x1=$(proc_csw "$rpid")
        if [ -n "$tracer" ] && [ "${PERF:-0}" = 1 ]; then
            kill -INT "$tracer"; wait "$tracer" || true
            # The receiver's CPU per transaction, split by the system call (or user space) each sample is in.
            rc=$(python3 -c "print(($r1 - $r0) * 1e6 / $txns)")
            echo "    rep $rep $c: CPU per transaction by system call (perf, inclusive; µs/txn of $(printf %.1f "$rc"))"
            perf report -q -i "$ROOT/perf.$c.$rep" --children -g none --sort sym 2>/dev/null |
                awk -v rc="$rc" '$3 == "[k]" && $4 ~ /^(__x64_sys_|__do_sys_|ksys_|x64_sys_call|do_syscall_64|entry_SYSCALL_64|asm_|irq|__irq|sysvec_)/ {
                    gsub("%", "", $1); printf "        %-36s %5.1f%%  %6.1f µs/txn\n", $4, $1, $1 * rc / 100 }' | head -16 || true
            echo "    rep $rep $c: where the receiver's CPU goes (perf, cpu-clock samples, self time)"
            perf report -q -i "$ROOT/perf.$c.$rep" --no-children -g none --sort dso 2>/dev/null |
                grep -v '^$' | head -8 | sed 's/^/        /'
            echo "    rep $rep $c: kernel symbols, self time (share of all samples)"
            perf report -q -i "$ROOT/perf.$c.$rep" --no-children -g none --sort sym 2>/dev/null |
                grep '\[k\]' | head -25 | cut -c1-120 | sed 's/^/        /' || true
            echo "    rep $rep $c: user-space symbols (share of all samples)"
            perf report -q -i "$ROOT/perf.$c.$rep" --no-children -g none --sort dso,sym 2>/dev/null |
                grep -v '^$' | grep -v '\[k\]' | head -25 | cut -c1-150 | sed 's/^/        /' || true
        elif [ -n "$tracer" ]; then
            kill -INT "$tracer"; wait "$tracer" || true
            echo "    rep $rep $c: system calls per transaction (strace -c, all threads)"
            awk -v n="$txns" '$1 ~ /^[0-9.]+$/ && NF >= 5 { printf "        %-16s %7.2f calls/txn %7.1f us/txn\n", $NF, $4 / n, $2 * 1e6 / n }' \
                "$ROOT/strace.$c.$rep" | sort -k4 -rn | head -12
        fi
        # Per transaction: receiver CPU µs, walsender CPU µs, receiver context switches.
        rcpu=$(python3 -c "print(f'{($r1 - $r0) * 1e6 / $txns:.1f}')")
        scpu=$(python3 -c "print(f'{($s1 - $s0) * 1e6 / $txns:.1f}')")
        rcsw=$(python3 -c "print(f'{($x1 - $x0) / $txns:.2f}')")
        rusr=$(python3 -c "print(f'{($u1 - $u0) * 1e6 / $txns:.1f}')")
        stop_case "$c"
        printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$c" "$tps" "$lat" "$rcpu" "$scpu" "$rcsw" >>"$results"
        printf '    rep %d %-14s %8.0f TPS  %6.2f ms  receiver %6.1f µs/txn (user %5.1f)  walsender %6.1f µs/txn  %5.2f csw/txn\n' \
            "$rep" "$c" "$tps" "$lat" "$rcpu" "$rusr" "$scpu" "$rcsw"
    done
done

python3 - "$results" "$SCALE" "$CLIENTS" "$DURATION" <<'PY'
import sys, statistics
rows = [l.split("\t") for l in open(sys.argv[1]).read().splitlines()]
by = {}
for c, tps, lat, rcpu, scpu, csw in rows:
    by.setdefault(c, ([], [], [], [], []))
    for i, v in enumerate((tps, lat, rcpu, scpu, csw)):
        by[c][i].append(float(v))
print(f"\npgbench tpcb-like, scale {sys.argv[2]}, {sys.argv[3]} clients, {sys.argv[4]} s per run; medians [min-max]\n")
print("| synchronous standby | TPS | latency avg ms | receiver CPU µs/txn | walsender CPU µs/txn | receiver csw/txn |")
print("|---|---|---|---|---|---|")
labels = {"none": "none", "pg_receivewal": "pg_receivewal --synchronous", "walsink": "walsink --synchronous",
          "walsink_zeros": "walsink --synchronous, zero-filled segments",
          "walsink_alt": "walsink --synchronous (WALSINK_ALT build)", "standby": "streaming standby"}
med = statistics.median
for c, (t, l, r, s, x) in by.items():
    print(f"| {labels.get(c, c)} | {med(t):.0f} [{min(t):.0f}-{max(t):.0f}] | {med(l):.2f} | {med(r):.1f} | {med(s):.1f} | {med(x):.2f} |")
if "walsink" in by:
    w = med(by["walsink"][0])
    for other in ("pg_receivewal", "standby", "none"):
        if other in by:
            print(f"walsink / {labels[other]}: {w / med(by[other][0]):.2f}x TPS")
PY
