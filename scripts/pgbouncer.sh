#!/usr/bin/env bash
# Starts a PgBouncer in transaction mode in front of the PostgreSQL that
# scripts/postgres.sh set up. Source it after postgres.sh and call
# ensure_pgbouncer: it exports AGENTSTREAM_TEST_PGBOUNCER_URL (the test
# database, reached through PgBouncer) and stops PgBouncer when the sourcing
# shell exits, before the traps that were already set (postgres.sh's drop of
# the test database) run.
#
# PgBouncer listens on 127.0.0.1 at a free port with `pool_mode =
# transaction` and a small pool (4 server connections per database and
# user), so that agentstream's connections really share server connections.
# Its config, log and pid file live in a temporary folder, removed at exit.
# Debian's pgbouncer is installed when missing; it refuses to run as root, so
# it runs as the `postgres` user then.

pgb_port=""
pgb_dir=""

pgb_bin() {
    if command -v pgbouncer >/dev/null; then
        command -v pgbouncer
    elif [ -x /usr/sbin/pgbouncer ]; then
        echo /usr/sbin/pgbouncer
    fi
}

# A TCP port on 127.0.0.1 that nothing answers on.
pgb_free_port() {
    local port
    for _ in $(seq 1 50); do
        port=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return 0
        fi
    done
    return 1
}

pgb_answers() {
    psql -q -h 127.0.0.1 -p "$pgb_port" -U "$pg_user" -d "$AGENTSTREAM_PG_TEST_DB" \
        -Atc 'SELECT 1' >/dev/null 2>&1
}

# Writes the config and starts PgBouncer as a daemon on a free port.
pgb_start() {
    local bin=$1 user=$2
    pgb_port=$(pgb_free_port) || return 1
    printf '"%s" ""\n' "$pg_user" >"$pgb_dir/userlist.txt"
    cat >"$pgb_dir/pgbouncer.ini" <<INI
[databases]
* = host=127.0.0.1 port=$pg_port

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $pgb_port
unix_socket_dir = $pgb_dir
auth_type = trust
auth_file = $pgb_dir/userlist.txt
admin_users = $pg_user
pool_mode = transaction
default_pool_size = 4
max_client_conn = 1000
ignore_startup_parameters = extra_float_digits,options
logfile = $pgb_dir/pgbouncer.log
pidfile = $pgb_dir/pgbouncer.pid
INI
    if [ -n "$user" ]; then
        "$bin" -d -u "$user" "$pgb_dir/pgbouncer.ini"
    else
        "$bin" -d "$pgb_dir/pgbouncer.ini"
    fi
}

ensure_pgbouncer() {
    if [ -z "${AGENTSTREAM_PG_TEST_DB:-}" ]; then
        echo "pgbouncer.sh: run ensure_postgres (scripts/postgres.sh) first" >&2
        return 1
    fi
    local bin user=""
    bin=$(pgb_bin)
    if [ -z "$bin" ]; then
        echo "pgbouncer.sh: installing Debian's pgbouncer" >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null
        bin=$(pgb_bin)
    fi
    [ -n "$bin" ] || { echo "pgbouncer.sh: pgbouncer is not installed and cannot be" >&2; return 1; }

    pgb_dir=$(mktemp -d /tmp/agentstream-pgbouncer.XXXXXX)
    if [ "$(id -u)" = 0 ]; then
        # PgBouncer will not run as root.
        user=postgres
        id -u "$user" >/dev/null 2>&1 || user=nobody
        chown "$user" "$pgb_dir"
    fi
    pgb_chain_exit_trap

    local started=""
    for _ in 1 2 3; do
        if pgb_start "$bin" "$user"; then
            for _ in $(seq 1 40); do
                if pgb_answers; then started=yes; break; fi
                sleep 0.25
            done
        fi
        [ -n "$started" ] && break
        pgb_stop # a port taken meanwhile: try another
    done
    if [ -z "$started" ]; then
        echo "pgbouncer.sh: PgBouncer did not start; its log:" >&2
        cat "$pgb_dir/pgbouncer.log" >&2 2>/dev/null || true
        return 1
    fi
    export AGENTSTREAM_TEST_PGBOUNCER_URL="postgres://$pg_user@127.0.0.1:$pgb_port/$AGENTSTREAM_PG_TEST_DB"
    echo "pgbouncer.sh: PgBouncer (transaction mode) at $AGENTSTREAM_TEST_PGBOUNCER_URL" >&2
}

# Stops PgBouncer first, then runs the EXIT trap that was set before (if any).
pgb_chain_exit_trap() {
    local current
    current=$(trap -p EXIT)
    AGENTSTREAM_PGB_PREVIOUS_TRAP=""
    if [ -n "$current" ]; then
        # `trap -p` prints `trap -- 'COMMAND' EXIT`, quoted for the shell.
        eval "set -- $current"
        AGENTSTREAM_PGB_PREVIOUS_TRAP=$3
    fi
    trap 'cleanup_pgbouncer; eval "$AGENTSTREAM_PGB_PREVIOUS_TRAP"' EXIT
}

pgb_stop() {
    local pid
    pid=$(cat "$pgb_dir/pgbouncer.pid" 2>/dev/null) || return 0
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 40); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

cleanup_pgbouncer() {
    [ -n "${pgb_dir:-}" ] || return 0
    pgb_stop
    # Databases the pooler tests made (named after the run's database) and
    # left behind if a test failed before dropping its own.
    local leftovers
    leftovers=$(psql -h 127.0.0.1 -p "$pg_port" -U "$pg_user" -d postgres -Atc \
        "SELECT datname FROM pg_database WHERE datname LIKE '${AGENTSTREAM_PG_TEST_DB}\_%'" 2>/dev/null) || true
    for db in $leftovers; do
        psql -q -h 127.0.0.1 -p "$pg_port" -U "$pg_user" -d postgres \
            -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true
    done
    rm -rf "$pgb_dir"
    pgb_dir=""
}
