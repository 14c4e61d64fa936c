# Shared helpers for the benchmark scripts (sourced, not run).
# Provides: PGBIN, RUNAS (prefix to run server programs as an unprivileged user when root),
# free_port, start_cluster DIR PORT [postgres -c options...], stop_cluster DIR, psql_at SOCKDIR PORT [psql args].

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
