#!/usr/bin/env bash
# walsink quickstart: see walsink archive a real PostgreSQL server's WAL on this machine, in about a minute.
#
#   scripts/quickstart.sh [ARCHIVE_DIR]        (ARCHIVE_DIR defaults to ./demo-archive)
#
# Steps: install missing dependencies, build walsink (release), start a throwaway PostgreSQL primary on a
# free port on 127.0.0.1 (as the unprivileged user walsink_pg when run as root; PostgreSQL refuses root),
# create the replication slot walsink_demo, stream WAL into ARCHIVE_DIR in the background, generate WAL
# (pgbench -i -s 5 and a few WAL switches), list the archive, stop walsink with SIGINT, and check every
# archived segment against the primary's pg_wal byte for byte (cmp). The primary and its temp directory are
# removed on exit, whatever happens; the archive stays for you to look at.
#
# Environment: WALSINK_PG_BINDIR picks the PostgreSQL binaries (default: the highest
# /usr/lib/postgresql/*/bin). Exits non-zero if any step fails.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$(pwd)

ARCHIVE=${1:-./demo-archive}
SLOT=walsink_demo
PG_USER=walsink_pg
WALSINK=$REPO/target/release/walsink

step_no=0
step() { step_no=$((step_no + 1)); printf '\n==> [%d] %s\n' "$step_no" "$*"; }
info() { printf '    %s\n' "$*"; }
die() { printf '\nquickstart: FAILED: %s\n' "$*" >&2; exit 1; }

PGROOT=""
WS_PID=""
RUNAS=()
BINDIR=""

cleanup() {
    local rc=$?
    set +e
    if [ -n "$WS_PID" ] && kill -0 "$WS_PID" 2>/dev/null; then
        kill -INT "$WS_PID" 2>/dev/null
        for _ in $(seq 1 50); do kill -0 "$WS_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$WS_PID" 2>/dev/null
        wait "$WS_PID" 2>/dev/null
    fi
    if [ "$rc" -ne 0 ] && [ -n "$PGROOT" ]; then
        if [ -s "$PGROOT/walsink.log" ]; then
            printf '\n--- walsink log (last 30 lines) ---\n' >&2
            tail -n 30 "$PGROOT/walsink.log" >&2
        fi
        if [ -s "$PGROOT/server.log" ]; then
            printf '\n--- PostgreSQL log (last 30 lines) ---\n' >&2
            tail -n 30 "$PGROOT/server.log" >&2
        fi
    fi
    if [ -n "$PGROOT" ] && [ -d "$PGROOT" ]; then
        if [ -f "$PGROOT/data/postmaster.pid" ]; then
            printf '\n==> stopping the throwaway primary\n'
            as_pg "$BINDIR/pg_ctl" stop -D "$PGROOT/data" -m fast -w -t 60 >/dev/null 2>&1 \
                || as_pg "$BINDIR/pg_ctl" stop -D "$PGROOT/data" -m immediate -w >/dev/null 2>&1
        fi
        rm -rf "$PGROOT"
        printf '    removed %s\n' "$PGROOT"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A PostgreSQL server tool, run as the server user when root, from the temp dir (the user may not be
# allowed into the current directory).
as_pg() { (cd "$PGROOT" && "${RUNAS[@]}" "$@"); }

# psql against the throwaway primary over TCP, unaligned, tuples only.
q() { "$BINDIR/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -c "$1"; }

# ---------------------------------------------------------------------------------------------------------
step "installing missing dependencies (scripts/install-deps.sh)"
scripts/install-deps.sh

step "building walsink (cargo build --release)"
cargo build --release
[ -x "$WALSINK" ] || die "cargo build succeeded but $WALSINK is missing"
info "built $WALSINK"

# ---------------------------------------------------------------------------------------------------------
step "starting a throwaway PostgreSQL primary"
if [ -n "${WALSINK_PG_BINDIR:-}" ]; then
    BINDIR=$WALSINK_PG_BINDIR
else
    BINDIR=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin 2>/dev/null | sort -V | tail -n 1 || true)
fi
if [ -z "$BINDIR" ] || [ ! -x "$BINDIR/initdb" ]; then
    die "no PostgreSQL binaries found (looked in ${BINDIR:-/usr/lib/postgresql/*/bin}); set WALSINK_PG_BINDIR"
fi
for tool in initdb pg_ctl psql pgbench; do
    [ -x "$BINDIR/$tool" ] || die "$BINDIR/$tool is missing"
done
info "PostgreSQL binaries: $BINDIR ($("$BINDIR/postgres" --version))"

if [ "$(id -u)" -eq 0 ]; then
    # PostgreSQL refuses to run as root: run the server as an unprivileged user (the one the tests use).
    if ! id "$PG_USER" >/dev/null 2>&1; then
        info "creating the unprivileged OS user $PG_USER to run PostgreSQL"
        lock=/run/lock; [ -d "$lock" ] || lock=/tmp
        flock "$lock/walsink-test-useradd.lock" sh -c \
            "id $PG_USER >/dev/null 2>&1 || useradd --system --user-group --no-create-home --shell /usr/sbin/nologin --comment 'walsink test PostgreSQL servers' $PG_USER" \
            || die "could not create the OS user $PG_USER"
    fi
    RUNAS=(runuser -u "$PG_USER" --)
    info "running PostgreSQL as $PG_USER (this script runs as root)"
fi

PGROOT=$(mktemp -d /tmp/walsink-demo.XXXXXX)
if [ "$(id -u)" -eq 0 ]; then chown "$PG_USER:" "$PGROOT"; fi
chmod 700 "$PGROOT"
as_pg "$BINDIR/initdb" -D "$PGROOT/data" -U postgres -N --no-locale -E UTF8 \
    --auth-local=trust --auth-host=trust >"$PGROOT/initdb.log" 2>&1 \
    || { cat "$PGROOT/initdb.log" >&2; die "initdb failed"; }

# A free port: not accepting connections now; if it is taken by the time the server binds, try another.
PORT=""
for attempt in 1 2 3 4 5; do
    for _ in $(seq 1 50); do
        candidate=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$candidate") 2>/dev/null; then PORT=$candidate; break; fi
    done
    [ -n "$PORT" ] || die "found no free TCP port on 127.0.0.1"
    # fsync=off: this primary is thrown away. wal_keep_size keeps segments in pg_wal for the comparison.
    if as_pg "$BINDIR/pg_ctl" start -D "$PGROOT/data" -l "$PGROOT/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -c port=$PORT -c unix_socket_directories=$PGROOT \
            -c fsync=off -c wal_keep_size=1GB -c max_wal_senders=10 -c max_replication_slots=10" \
        >/dev/null 2>&1; then
        break
    fi
    if grep -q "could not bind\|could not create any TCP/IP sockets" "$PGROOT/server.log" 2>/dev/null \
        && [ "$attempt" -lt 5 ]; then
        info "port $PORT was taken; trying another"
        PORT=""
        continue
    fi
    die "PostgreSQL did not start (log: see below)"
done
CONNSTR="host=127.0.0.1 port=$PORT user=postgres"
info "primary running on 127.0.0.1:$PORT, data in $PGROOT/data (16 MiB WAL segments)"
info "system identifier $(q 'SELECT system_identifier FROM pg_control_system()')"

# ---------------------------------------------------------------------------------------------------------
step "preparing the archive directory $ARCHIVE"
if [ -d "$ARCHIVE" ] && [ -n "$(ls -A "$ARCHIVE")" ]; then
    # Only a previous demo's archive may be cleared: WAL files and walsink's own files, nothing else.
    unexpected=$(find "$ARCHIVE" -mindepth 1 -maxdepth 1 -printf '%f\n' | grep -Ev \
        '^([0-9A-F]{24}(\.partial)?|[0-9A-F]{8}\.history)(\.tmp)?$|^walsink\.(lock|meta)(\.tmp)?$' || true)
    if [ -n "$unexpected" ]; then
        die "$ARCHIVE is not empty and holds files that are not a walsink archive's ($(echo "$unexpected" | head -n 3 | tr '\n' ' ')); use an empty directory: scripts/quickstart.sh DIR"
    fi
    info "removing the previous demo's archive (it belongs to an earlier throwaway primary)"
    find "$ARCHIVE" -mindepth 1 -maxdepth 1 -type f -delete
fi
if [ ! -d "$ARCHIVE" ]; then
    mkdir -m 700 "$ARCHIVE" || die "cannot create $ARCHIVE"
fi
info "archive: $(cd "$ARCHIVE" && pwd) (mode $(stat -c %a "$ARCHIVE"))"

# ---------------------------------------------------------------------------------------------------------
step "creating the replication slot $SLOT"
info "\$ walsink receive -D $ARCHIVE -d \"$CONNSTR\" --slot $SLOT --create-slot --if-not-exists"
"$WALSINK" receive -D "$ARCHIVE" -d "$CONNSTR" --slot "$SLOT" --create-slot --if-not-exists \
    || die "walsink --create-slot failed"
[ "$(q "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '$SLOT'")" = 1 ] \
    || die "the slot $SLOT does not exist after --create-slot"
info "slot $SLOT created"

step "starting walsink in the background"
info "\$ walsink receive -D $ARCHIVE -d \"$CONNSTR\" --slot $SLOT -v &"
"$WALSINK" receive -D "$ARCHIVE" -d "$CONNSTR" --slot "$SLOT" -v >"$PGROOT/walsink.log" 2>&1 &
WS_PID=$!
streaming=no
for _ in $(seq 1 300); do
    kill -0 "$WS_PID" 2>/dev/null || die "walsink exited early (log: see below)"
    if [ "$(q "SELECT active FROM pg_replication_slots WHERE slot_name = '$SLOT'")" = t ]; then
        streaming=yes
        break
    fi
    sleep 0.1
done
[ "$streaming" = yes ] || die "walsink did not start streaming within 30 s"
info "walsink (pid $WS_PID) is streaming through slot $SLOT"

# ---------------------------------------------------------------------------------------------------------
step "generating WAL: pgbench -i -s 5, then three WAL switches"
"$BINDIR/pgbench" -h 127.0.0.1 -p "$PORT" -U postgres -i -s 5 -q postgres >"$PGROOT/pgbench.log" 2>&1 \
    || { cat "$PGROOT/pgbench.log" >&2; die "pgbench -i failed"; }
info "pgbench: $(tail -n 1 "$PGROOT/pgbench.log")"
last_segment=""
q "CREATE TABLE demo_ticks (at timestamptz)" >/dev/null
for _ in 1 2 3; do
    q "INSERT INTO demo_ticks VALUES (now())" >/dev/null
    last_segment=$(q "SELECT pg_walfile_name(pg_switch_wal())")
done
info "primary is now at $(q 'SELECT pg_current_wal_lsn()'); last completed segment $last_segment"

step "waiting for walsink to archive $last_segment"
for _ in $(seq 1 600); do
    [ -f "$ARCHIVE/$last_segment" ] && break
    kill -0 "$WS_PID" 2>/dev/null || die "walsink exited while streaming (log: see below)"
    sleep 0.1
done
[ -f "$ARCHIVE/$last_segment" ] || die "walsink did not archive $last_segment within 60 s"
sleep 2 # a moment for the slot feedback, so pg_replication_slots below shows it
info "slot $SLOT: restart_lsn $(q "SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = '$SLOT'")"
echo
echo "\$ ls -l $ARCHIVE"
ls -l "$ARCHIVE"

# ---------------------------------------------------------------------------------------------------------
step "stopping walsink (SIGINT)"
kill -INT "$WS_PID"
ws_rc=""
for _ in $(seq 1 300); do
    if ! kill -0 "$WS_PID" 2>/dev/null; then
        ws_rc=0
        wait "$WS_PID" || ws_rc=$?
        break
    fi
    sleep 0.1
done
[ -n "$ws_rc" ] || die "walsink did not exit within 30 s of SIGINT"
WS_PID=""
[ "$ws_rc" -eq 0 ] || die "walsink exited with status $ws_rc after SIGINT (log: see below)"
info "walsink exited cleanly (status 0)"

# ---------------------------------------------------------------------------------------------------------
step "checking the archive against the primary's pg_wal (cmp, byte for byte)"
matched=0
mismatched=0
missing=0
for path in "$ARCHIVE"/*; do
    name=$(basename "$path")
    [[ "$name" =~ ^[0-9A-F]{24}$ ]] || continue
    original="$PGROOT/data/pg_wal/$name"
    if [ ! -f "$original" ]; then
        missing=$((missing + 1))
        info "$name: not in pg_wal any more (cannot compare)"
    elif cmp -s "$path" "$original"; then
        matched=$((matched + 1))
    else
        mismatched=$((mismatched + 1))
        info "$name: DIFFERS from pg_wal ($(cmp "$path" "$original" 2>&1 | head -n 1))"
    fi
done
partials=$(find "$ARCHIVE" -maxdepth 1 -name '*.partial' | wc -l)

echo
echo "Summary"
echo "  archive:            $(cd "$ARCHIVE" && pwd)"
echo "  completed segments: $((matched + mismatched + missing)) (16 MiB each)"
echo "  identical to pg_wal: $matched"
[ "$mismatched" -eq 0 ] || echo "  DIFFERENT:          $mismatched"
[ "$missing" -eq 0 ] || echo "  not comparable:     $missing (removed from pg_wal)"
echo "  .partial segments:  $partials (the segment being written when walsink stopped)"
echo "  walsink log:        $(wc -l <"$PGROOT/walsink.log") lines; last lines:"
tail -n 5 "$PGROOT/walsink.log" | sed 's/^/    /'

[ "$mismatched" -eq 0 ] || die "$mismatched archived segment(s) differ from the primary's pg_wal"
[ "$matched" -gt 0 ] || die "no archived segment could be compared with the primary's pg_wal"
echo
echo "quickstart: OK: walsink archived $matched segment(s), byte-identical to the primary's pg_wal."
echo "The throwaway primary is stopped and removed now; the archive stays in $ARCHIVE."
