#!/usr/bin/env bash
# Make sure Redis (127.0.0.1:6379) and PostgreSQL (127.0.0.1:5432, user postgres, trust auth
# on loopback) answer, for the test suite and the benches. Quick and silent when both already
# answer; otherwise installs Debian's packages if they are missing, starts what is stopped,
# and waits until both answer. Meant for development and CI machines (it may run apt-get and
# loosen PostgreSQL's loopback authentication to trust), never for production hosts.
# Exit status: 0 when both answer, 1 otherwise (with the reason on stderr).
set -euo pipefail

REDIS_PORT=${SERVICES_REDIS_PORT:-6379}
PG_PORT=${SERVICES_PG_PORT:-5432}
WAIT_SECONDS=${SERVICES_WAIT_SECONDS:-60}

say() { echo "services: $*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

redis_up() {
    if command -v redis-cli >/dev/null 2>&1; then
        [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = "PONG" ]
    else
        port_open "$REDIS_PORT"
    fi
}

pg_up() {
    if command -v psql >/dev/null 2>&1; then
        psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -tAc 'select 1' >/dev/null 2>&1
    else
        port_open "$PG_PORT"
    fi
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"
    else say "need root to run: $*"; return 1
    fi
}

apt_updated=0
install_packages() {
    command -v apt-get >/dev/null 2>&1 || { say "apt-get not found; install $* by hand"; return 1; }
    if [ "$apt_updated" -eq 0 ]; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        apt_updated=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

start_redis() {
    command -v redis-server >/dev/null 2>&1 || install_packages redis-server
    local dir=/var/lib/redis
    [ -d "$dir" ] && [ -w "$dir" ] || dir=$(mktemp -d)
    redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
        --dir "$dir" --logfile "$dir/triagegate-services.log" >/dev/null
}

trust_loopback() {
    # A fresh Debian cluster wants passwords over TCP; the tests connect as postgres without one.
    local hba
    hba=$(ls /etc/postgresql/*/main/pg_hba.conf 2>/dev/null | head -n1) || return 0
    [ -n "$hba" ] || return 0
    if ! grep -Eq '^host\s+all\s+all\s+127\.0\.0\.1/32\s+trust' "$hba"; then
        as_root sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
    fi
}

start_postgres() {
    command -v pg_ctlcluster >/dev/null 2>&1 || install_packages postgresql
    local version
    version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n1)
    [ -n "$version" ] || { say "no PostgreSQL cluster under /etc/postgresql"; return 1; }
    trust_loopback
    if as_root pg_ctlcluster --skip-systemctl-redirect "$version" main status >/dev/null 2>&1; then
        as_root pg_ctlcluster --skip-systemctl-redirect "$version" main reload >/dev/null
    else
        as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
    fi
}

wait_for() {
    local name=$1 check=$2 deadline=$((SECONDS + WAIT_SECONDS))
    until "$check"; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            say "$name is not answering after ${WAIT_SECONDS}s"
            return 1
        fi
        sleep 0.5
    done
}

status=0
if ! redis_up; then
    say "starting Redis"
    start_redis || status=1
    wait_for Redis redis_up || status=1
fi
if ! pg_up; then
    say "starting PostgreSQL"
    start_postgres || status=1
    wait_for PostgreSQL pg_up || status=1
fi
exit "$status"
