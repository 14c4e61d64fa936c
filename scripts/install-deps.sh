#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine lacks to build and test walsink. Idempotent: run it as often as you
# like; it only acts on what is missing.
#   - a C toolchain (cc, the linker Rust uses) if missing: build-essential
#   - PostgreSQL server binaries (initdb, pg_ctl, postgres, pg_receivewal, pg_basebackup, pg_waldump,
#     pgbench) if no /usr/lib/postgresql/*/bin/initdb exists: postgresql, postgresql-contrib
#   - the de_DE.UTF-8 locale (for the translated-server test) if missing: locales, localedef
#   - the rustfmt and clippy components of the active Rust toolchain
#   - Barman 3.19.1 from PyPI in a venv of the system Python ($WALSINK_BARMAN_VENV, default /opt/walsink-barman;
#     python3-venv) and rsync, for the Barman test (tests/integration/barman.rs)
# cargo-nextest is optional: scripts/test.sh falls back to `cargo test` without it.
# Uses sudo for apt-get when not root (and sudo exists).
set -euo pipefail

say() { printf 'install-deps: %s\n' "$*"; }
die() { printf 'install-deps: error: %s\n' "$*" >&2; exit 1; }

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    fi
fi

apt_updated=no
apt_install() {
    command -v apt-get >/dev/null 2>&1 \
        || die "apt-get not found; install these packages by hand: $*"
    if [ "$(id -u)" -ne 0 ] && [ ${#SUDO[@]} -eq 0 ]; then
        die "need root or sudo to install: $*"
    fi
    if [ "$apt_updated" = no ]; then
        say "apt-get update"
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        apt_updated=yes
    fi
    say "apt-get install $*"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# 1. C toolchain: rustc links through cc.
if ! command -v cc >/dev/null 2>&1; then
    apt_install build-essential
fi

# 2. PostgreSQL server binaries.
if compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
    say "PostgreSQL found: $(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin | sort -V | tail -n 1)"
else
    apt_install postgresql postgresql-contrib
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null \
        || die "installed postgresql but found no /usr/lib/postgresql/*/bin/initdb"
    say "PostgreSQL installed: $(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin | sort -V | tail -n 1)"
fi

# 2b. The openssl command: the TLS tests (tests/integration/tls.rs) make their CA, server, client, expired
#     and revoked certificates with it.
if command -v openssl >/dev/null 2>&1; then
    say "openssl found: $(openssl version)"
else
    apt_install openssl
fi
# 2c. util-linux's `script` (package bsdutils, essential on Debian, so normally present): the verify test
#     (tests/integration/verify.rs) runs `walsink verify` on a pseudo-terminal to see its progress bar.
if ! command -v script >/dev/null 2>&1; then
    apt_install bsdutils
fi

# 3. The de_DE.UTF-8 locale: the translated-server test (tests/integration/translated.rs) runs PostgreSQL with
#    lc_messages = 'de_DE.UTF-8' (the server's German messages come with the postgresql-NN package).
if locale -a 2>/dev/null | grep -qix 'de_DE\.utf-\?8'; then
    say "locale de_DE.UTF-8 found"
else
    # Debian's locale sources and locale-gen come with the locales package.
    if [ ! -e /usr/share/i18n/locales/de_DE ] || ! command -v locale-gen >/dev/null 2>&1; then
        apt_install locales
    fi
    if [ "$(id -u)" -ne 0 ] && [ ${#SUDO[@]} -eq 0 ]; then
        die "need root or sudo to generate the de_DE.UTF-8 locale"
    fi
    # Listed in /etc/locale.gen, so that a later locale-gen keeps it.
    say "locale-gen de_DE.UTF-8"
    if ! grep -qx 'de_DE.UTF-8 UTF-8' /etc/locale.gen 2>/dev/null; then
        echo 'de_DE.UTF-8 UTF-8' | "${SUDO[@]}" tee -a /etc/locale.gen >/dev/null
    fi
    "${SUDO[@]}" locale-gen >/dev/null
    locale -a 2>/dev/null | grep -qix 'de_DE\.utf-\?8' || die "generated de_DE.UTF-8 but locale -a does not list it"
fi

# 4. Service tools: Prometheus and promtool (tests/integration/service.rs scrapes walsink with a real
#    Prometheus server and checks its output with `promtool check metrics`), systemd-analyze (the units in
#    contrib/systemd are checked with `systemd-analyze verify`).
missing=()
command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
# /bin/kill (procps): the systemd-analyze test copies it into the root it verifies the units in (ExecReload=).
[ -x /bin/kill ] || missing+=(procps)
if [ ${#missing[@]} -gt 0 ]; then
    apt_install "${missing[@]}"
fi
say "prometheus $(prometheus --version 2>&1 | head -n 1 | awk '{print $3}'), $(systemd-analyze --version | head -n 1)"

# 5. Rust toolchain components.
command -v cargo >/dev/null 2>&1 \
    || die "cargo not found: install Rust (rustup, https://rustup.rs) and put ~/.cargo/bin on PATH"
for component in rustfmt clippy; do
    if [ "$component" = rustfmt ]; then probe=(cargo fmt --version); else probe=(cargo clippy --version); fi
    if "${probe[@]}" >/dev/null 2>&1; then
        continue
    fi
    command -v rustup >/dev/null 2>&1 || die "$component is missing and rustup is not available to add it"
    say "rustup component add $component"
    rustup component add "$component"
done

# 6. Barman, for tests/integration/barman.rs: a venv of the system Python (a Python under /root, e.g. pyenv's,
#    is not usable by Barman's own OS user), barman from PyPI, and rsync (barman recover copies with it).
#    psycopg2-binary provides the psycopg2 module barman imports (the psycopg2 package would be compiled).
BARMAN_VERSION=3.19.1
BARMAN_VENV=${WALSINK_BARMAN_VENV:-/opt/walsink-barman}
if [ -x "$BARMAN_VENV/bin/barman" ] && [ "$("$BARMAN_VENV/bin/barman" --version 2>/dev/null | head -n 1 | cut -d" " -f1)" = "$BARMAN_VERSION" ]; then
    say "Barman $BARMAN_VERSION found: $BARMAN_VENV/bin/barman"
else
    if [ ! -x /usr/bin/python3 ] || ! /usr/bin/python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
        apt_install python3-venv
    fi
    if [ "$(id -u)" -ne 0 ] && [ ! -w "$(dirname "$BARMAN_VENV")" ]; then
        die "cannot create $BARMAN_VENV: run as root or set WALSINK_BARMAN_VENV to a writable path"
    fi
    say "Barman $BARMAN_VERSION into $BARMAN_VENV"
    /usr/bin/python3 -m venv "$BARMAN_VENV"
    "$BARMAN_VENV/bin/pip" install -q --disable-pip-version-check psycopg2-binary python-dateutil
    "$BARMAN_VENV/bin/pip" install -q --disable-pip-version-check --no-deps "barman==$BARMAN_VERSION"
    [ "$("$BARMAN_VENV/bin/barman" --version 2>/dev/null | head -n 1 | cut -d" " -f1)" = "$BARMAN_VERSION" ] \
        || die "installed barman into $BARMAN_VENV but '$BARMAN_VENV/bin/barman --version' does not say $BARMAN_VERSION"
    # Barman runs as its own OS user in the test: the venv must be readable and runnable by everyone.
    chmod -R a+rX "$BARMAN_VENV"
fi
if ! command -v rsync >/dev/null 2>&1; then
    apt_install rsync
fi

# 7. cargo-nextest (optional; not installed here because `cargo install` takes minutes).
if cargo nextest --version >/dev/null 2>&1; then
    say "cargo-nextest found: $(cargo nextest --version 2>/dev/null | head -n 1)"
else
    say "note: cargo-nextest not found; scripts/test.sh will use 'cargo test'" \
        "(optional: cargo install cargo-nextest --locked)"
fi
say "ok"
