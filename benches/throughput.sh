#!/usr/bin/env bash
# WAL receive throughput: walsink against pg_receivewal, side by side in one run.
#
# Starts a throwaway primary (16 MiB segments, loopback TCP, trust auth), pre-generates a
# fixed amount of WAL retained by a guard slot, then streams the same range (same start,
# same end LSN) with each receiver in turn, alternating, each run from a fresh copy of the
# guard slot into an empty directory. For every run it records wall time, CPU seconds
# (user+sys) and peak RSS of the receiver process (GNU time), checks every received segment
# byte for byte against the primary's pg_wal, and prints medians and walsink/pg_receivewal
# ratios per mode.
#
# usage: benches/throughput.sh            (4 GiB, 3 repetitions, modes "default synchronous")
#   GIB=1 REPS=1 MODES="default synchronous no-sync" benches/throughput.sh
#   NOVALIDATE=1 benches/throughput.sh     adds walsink with WAL validation off (WALSINK_BENCH_VALIDATE=0)
#                                          as a third receiver: the cost of validation, side by side
#   TLS=1 benches/throughput.sh            both receivers over TLS (ssl = on with a certificate made
#                                          here by openssl, sslmode=verify-full for both)
# Needs: PostgreSQL server binaries (scripts/install-deps.sh), GNU time, cargo; openssl for TLS=1.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

GIB=${GIB:-4}
REPS=${REPS:-3}
TLS=${TLS:-0}
MODES=${MODES:-"default synchronous"}
NOVALIDATE=${NOVALIDATE:-0}
TOOLS="walsink pg_receivewal"
[ "$NOVALIDATE" = 1 ] && TOOLS="walsink walsink-novalidate pg_receivewal"
source benches/lib.sh
need_gnu_time

build_walsink

bench_root walbench
cleanup() {
    stop_cluster "$ROOT" immediate
    rm -rf "$ROOT"
}
trap cleanup EXIT

ssl_opts=()
conn_extra=""
if [ "$TLS" = 1 ]; then
    # A CA and a server certificate for 127.0.0.1 (ECDSA P-256, as the tests make them); both receivers
    # verify it fully, so both pay for the same handshake and the same cipher (the server picks it).
    server_dir "$ROOT/sock"
    (
        cd "$ROOT/sock"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.crt \
            -days 2 -subj /CN=bench-ca -addext basicConstraints=critical,CA:TRUE \
            -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout server.key -out server.csr \
            -subj /CN=127.0.0.1 2>/dev/null
        printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n' >ext.cnf
        openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 2 \
            -extfile ext.cnf 2>/dev/null
        chmod 600 server.key
        [ ${#RUNAS[@]} -eq 0 ] || chown walsink_pg server.key server.crt
    )
    # log_connections: the server's log line for each receiver proves it used TLS.
    ssl_opts=(-c ssl=on -c "ssl_cert_file=$ROOT/sock/server.crt" -c "ssl_key_file=$ROOT/sock/server.key"
        -c log_connections=on)
    conn_extra=" sslmode=verify-full sslrootcert=$ROOT/sock/ca.crt"
fi

echo "==> starting primary on 127.0.0.1:$PORT ($ROOT)$([ "$TLS" = 1 ] && echo ", ssl = on")"
start_cluster "$ROOT" "$PORT" -c fsync=on -c shared_buffers=1GB -c wal_buffers=64MB -c max_wal_size=64GB \
    -c max_wal_senders=10 -c max_replication_slots=20 -c autovacuum=off "${ssl_opts[@]}"
psql_() { psql_at "$ROOT/sock" "$PORT" "$@"; }

echo "==> generating $GIB GiB of WAL"
pregenerate_wal psql_ "$GIB"
echo "    WAL $START .. $END: $BYTES bytes, $SEGS segments"

results="$ROOT/results.tsv"
: >"$results"
run=0
for rep in $(seq 1 "$REPS"); do
    for mode in $MODES; do
        for tool in $TOOLS; do
            run=$((run + 1))
            slot="run_$run"
            dir="$ROOT/recv_$run"
            install -d -m 700 "$dir"
            psql_ -c "SELECT pg_copy_physical_replication_slot('guard', '$slot')" >/dev/null
            flags=()
            case $mode in
                default) ;;
                synchronous) flags=(--synchronous) ;;
                no-sync) flags=(--no-sync) ;;
            esac
            envs=()
            [ "$tool" = walsink-novalidate ] && envs=(WALSINK_BENCH_VALIDATE=0)
            if [ "$tool" != pg_receivewal ]; then
                # WALSINK_WRAP, e.g. "perf record -g -o /tmp/walsink.perf", profiles walsink's runs.
                read -r -a wrap <<<"${WALSINK_WRAP:-}"
                # WALSINK_FLAGS, e.g. "--flush-bytes 16MB", adds flags to walsink's runs.
                read -r -a extra <<<"${WALSINK_FLAGS:-}"
                cmd=("${wrap[@]}" "$WALSINK" receive "${extra[@]}")
            else
                cmd=("$PGBIN/pg_receivewal")
            fi
            sync
            env "${envs[@]}" /usr/bin/time -f "%e %U %S %M" -o "$ROOT/time_$run" \
                "${cmd[@]}" -D "$dir" -d "host=127.0.0.1 port=$PORT user=postgres application_name=bench_$tool$conn_extra" \
                -S "$slot" -E "$END" --no-loop "${flags[@]}" >"$ROOT/out_$run" 2>&1 || {
                echo "run $run ($tool $mode) failed:" >&2
                cat "$ROOT/out_$run" >&2
                exit 1
            }
            read -r wall user sys rss <"$ROOT/time_$run"
            if [ "$TLS" = 1 ] && ! grep -q "application_name=bench_$tool SSL enabled" "$ROOT/sock/server.log"; then
                echo "run $run ($tool $mode): the server log shows no TLS connection of $tool" >&2
                exit 1
            fi
            # Every segment in the range must be there and identical to the primary's.
            got=0
            for f in "$dir"/*; do
                b=$(basename "$f")
                [[ $b =~ ^[0-9A-F]{24}$ ]] || continue
                cmp -s "$f" "$ROOT/data/pg_wal/$b" || { echo "run $run: $b differs from pg_wal" >&2; exit 1; }
                got=$((got + 1))
            done
            [ "$got" -ge "$SEGS" ] || { echo "run $run ($tool $mode): $got completed segments, expected $SEGS" >&2; exit 1; }
            psql_ -c "SELECT pg_drop_replication_slot('$slot')" >/dev/null
            rm -rf "$dir"
            printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$mode" "$tool" "$wall" "$user" "$sys" "$rss" >>"$results"
            printf '    rep %d %-12s %-14s %6.2f s  %6.1f MiB/s  cpu %5.2f s (user %5.2f, sys %5.2f)  rss %5.1f MiB\n' \
                "$rep" "$mode" "$tool" "$wall" "$(python3 -c "print($BYTES/1048576/$wall)")" \
                "$(python3 -c "print($user+$sys)")" "$user" "$sys" "$(python3 -c "print($rss/1024)")"
        done
    done
done

python3 - "$results" "$BYTES" "$TLS" <<'PY'
import sys, statistics
rows = [l.split("\t") for l in open(sys.argv[1]).read().splitlines()]
nbytes = int(sys.argv[2]); gib = nbytes / 2**30; mib = nbytes / 2**20
stats = {}
for mode, tool, wall, user, sys_, rss in rows:
    s = stats.setdefault((mode, tool), {"mibs": [], "cpu": [], "rss": []})
    s["mibs"].append(mib / float(wall))
    s["cpu"].append((float(user) + float(sys_)) / gib)
    s["rss"].append(int(rss) / 1024)
med = lambda v: statistics.median(v)
print(f"\n{'over TLS (sslmode=verify-full); ' if sys.argv[3] == '1' else ''}WAL streamed per run: {gib:.2f} GiB; medians of {len(stats[next(iter(stats))]['mibs'])} runs [min-max]\n")
print(f"| mode | receiver | MiB/s | CPU-s/GiB | peak RSS MiB |")
print(f"|---|---|---|---|---|")
for (mode, tool), s in stats.items():
    print(f"| {mode} | {tool} | {med(s['mibs']):.0f} [{min(s['mibs']):.0f}-{max(s['mibs']):.0f}] "
          f"| {med(s['cpu']):.2f} [{min(s['cpu']):.2f}-{max(s['cpu']):.2f}] | {med(s['rss']):.1f} |")
print()
for mode in dict.fromkeys(m for m, _ in stats):
    w, p = stats.get((mode, "walsink")), stats.get((mode, "pg_receivewal"))
    if w and p:
        print(f"{mode}: walsink/pg_receivewal throughput {med(w['mibs'])/med(p['mibs']):.2f}x, "
              f"CPU per GiB {med(w['cpu'])/med(p['cpu']):.2f}x, peak RSS {med(w['rss']):.1f} vs {med(p['rss']):.1f} MiB")
    n = stats.get((mode, "walsink-novalidate"))
    if w and n:
        print(f"{mode}: WAL validation costs {med(w['cpu']) - med(n['cpu']):+.3f} CPU-s/GiB (median with minus median "
              f"without; runs [{min(w['cpu']):.2f}-{max(w['cpu']):.2f}] vs [{min(n['cpu']):.2f}-{max(n['cpu']):.2f}]), "
              f"throughput {med(w['mibs'])/med(n['mibs']):.2f}x")
PY
