# Shared helpers for the benchmark scripts (sourced, not run).
# Provides: PGBIN, RUNAS (prefix to run server programs as an unprivileged user when root),
# need_gnu_time, build_walsink, bench_root NAME, free_port, start_cluster DIR PORT [postgres -c options...],
# stop_cluster DIR, psql_at SOCKDIR PORT [psql args], pregenerate_wal PSQL_FN GIB.

PGBIN=${WALSINK_PG_BINDIR:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}
[ -x "$PGBIN/initdb" ] || { echo "no PostgreSQL binaries found; run scripts/install-deps.sh" >&2; exit 1; }

RUNAS=()
if [ "$(id -u)" = 0 ]; then
    id walsink_pg >/dev/null 2>&1 || useradd -r -M -s /usr/sbin/nologin walsink_pg
    RUNAS=(setpriv --reuid=walsink_pg --regid="$(id -g walsink_pg)" --init-groups)
fi

# A private directory owned by the server user.
server_dir() {
    if [ ${#RUNAS[@]} -gt 0 ]; then install -d -o walsink_pg -m 700 "$@"; else install -d -m 700 "$@"; fi
}

# need_gnu_time: exits unless GNU time (for wall, CPU and peak RSS of a run) is installed.
need_gnu_time() {
    [ -x /usr/bin/time ] || { echo "GNU time (/usr/bin/time) is required: apt-get install time" >&2; exit 1; }
}

# build_walsink: builds the release binary and sets WALSINK to it.
build_walsink() {
    echo "==> building walsink (release)"
    cargo build --release -q -p walsink
    WALSINK=$PWD/target/release/walsink
}

# bench_root NAME: sets ROOT to a new directory /tmp/NAME.XXXXXX (readable by the server user) and
# PORT to a free port for its cluster. The caller removes ROOT (its own cleanup trap).
bench_root() {
    ROOT=$(mktemp -d "/tmp/$1.XXXXXX")
    chmod 755 "$ROOT"
    PORT=$(free_port)
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# start_cluster DIR PORT [-c name=value ...]: initdb DIR/data (unless it exists) and start it on
# 127.0.0.1:PORT with its socket in DIR/sock; trust authentication.
start_cluster() {
    local dir=$1 port=$2
    shift 2
    server_dir "$dir/sock"
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        server_dir "$dir/data"
        "${RUNAS[@]}" "$PGBIN/initdb" -D "$dir/data" -U postgres -A trust --no-locale -E UTF8 >"$dir/sock/initdb.log" 2>&1
    fi
    "${RUNAS[@]}" "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/sock/server.log" -w \
        -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir/sock $*" start >/dev/null
}

stop_cluster() {
    "${RUNAS[@]}" "$PGBIN/pg_ctl" -D "$1/data" -m "${2:-fast}" stop >/dev/null 2>&1 || true
}

psql_at() {
    local sock=$1 port=$2
    shift 2
    "$PGBIN/psql" -X -q -At -h "$sock" -p "$port" -U postgres -d postgres "$@"
}

# pregenerate_wal PSQL_FN GIB: with a guard slot retaining it, writes GIB GiB of WAL as 1 MiB
# logical messages (half random bytes, half a repeated 8 kB pattern), ending on a segment
# boundary with one small committed record after it (so the server's flush is past the end).
# Sets START, END (LSNs), BYTES and SEGS (completed segments in [START, END)).
pregenerate_wal() {
    local q=$1 gib=$2
    $q -c "SELECT pg_create_physical_replication_slot('guard', true)" >/dev/null
    $q -c "SELECT pg_switch_wal()" >/dev/null
    START=$($q -c "SELECT pg_current_wal_lsn()")
    $q <<'SQL'
CREATE TABLE payload AS
  SELECT (SELECT decode(string_agg(lpad(to_hex((random()*255)::int), 2, '0'), ''), 'hex')
            FROM generate_series(1, 524288))
      || (SELECT decode(repeat(md5('walsink'), 16384), 'hex')) ||
         (SELECT decode(repeat(md5('walsink'), 16384), 'hex')) AS b;
SQL
    local msgs batch=64 i
    msgs=$(python3 -c "print(int(float('$gib') * 1024))")
    for ((i = 0; i < msgs; i += batch)); do
        $q -c "SELECT count(pg_logical_emit_message(false, 'bench', b)) FROM payload, generate_series(1, LEAST($batch, $msgs - $i))" >/dev/null
    done
    $q -c "SELECT pg_switch_wal()" >/dev/null
    END=$($q -c "SELECT pg_current_wal_lsn()")
    $q -c "CREATE TABLE after_end(x int); INSERT INTO after_end VALUES (1)" >/dev/null
    BYTES=$($q -c "SELECT pg_wal_lsn_diff('$END', '$START')::bigint")
    SEGS=$($q -c "SELECT count(*) FROM pg_ls_waldir() WHERE name ~ '^[0-9A-F]{24}$' AND name >= pg_walfile_name('$START') AND name < pg_walfile_name('$END')")
}
