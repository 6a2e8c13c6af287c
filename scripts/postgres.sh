#!/usr/bin/env bash
# Makes sure a PostgreSQL server answers and creates a fresh database for this
# run. Source it: it exports AGENTSTREAM_TEST_POSTGRES_URL and drops the
# database when the sourcing shell exits.
#
# 1. A server already answering on 127.0.0.1:5432 is used as it is.
# 2. Else an installed cluster (pg_ctlcluster) is started.
# 3. Else a temporary cluster is made with the installed PostgreSQL binaries
#    (installing Debian's postgresql package first if there are none).

pg_port=5432
pg_user=postgres

pg_answers() { pg_isready -q -h 127.0.0.1 -p "$pg_port" 2>/dev/null; }

pg_bin() {
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    [ -n "$dir" ] && echo "$dir"
}

pg_wait() {
    for _ in $(seq 1 60); do pg_answers && return 0; sleep 0.5; done
    return 1
}

pg_temporary_cluster() {
    local bin dir
    bin=$(pg_bin)
    if [ -z "$bin" ]; then
        echo "postgres.sh: no PostgreSQL binaries; installing Debian's postgresql" >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
        bin=$(pg_bin)
    fi
    [ -n "$bin" ] || { echo "postgres.sh: PostgreSQL is not installed and cannot be" >&2; return 1; }
    pg_port=55432
    dir=$(mktemp -d /tmp/agentstream-pg.XXXXXX)
    chown postgres "$dir" 2>/dev/null || true
    local as=""
    [ "$(id -u)" = 0 ] && as="runuser -u postgres --"
    $as "$bin/initdb" -D "$dir/data" -U "$pg_user" --auth=trust >/dev/null
    $as "$bin/pg_ctl" -D "$dir/data" -o "-p $pg_port -k $dir -c listen_addresses=127.0.0.1" \
        -l "$dir/log" start >/dev/null
    AGENTSTREAM_PG_TEMP_CLUSTER="$as $bin/pg_ctl -D $dir/data stop -m fast"
}

ensure_postgres() {
    if ! pg_answers; then
        if command -v pg_ctlcluster >/dev/null && ls /etc/postgresql/*/main >/dev/null 2>&1; then
            echo "postgres.sh: starting the installed cluster" >&2
            pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n 1)" main start \
                && pg_wait || true
        fi
    fi
    if ! pg_answers; then
        echo "postgres.sh: creating a temporary cluster" >&2
        pg_temporary_cluster && pg_wait
    fi
    pg_answers || { echo "postgres.sh: no PostgreSQL could be had" >&2; return 1; }

    local db="agentstream_test_$(date +%s)_$$"
    psql -q -h 127.0.0.1 -p "$pg_port" -U "$pg_user" -d postgres -c "CREATE DATABASE $db" >/dev/null
    export AGENTSTREAM_TEST_POSTGRES_URL="postgres://$pg_user@127.0.0.1:$pg_port/$db"
    AGENTSTREAM_PG_TEST_DB="$db"
    trap 'cleanup_postgres' EXIT
    echo "postgres.sh: tests use $AGENTSTREAM_TEST_POSTGRES_URL" >&2
}

cleanup_postgres() {
    psql -q -h 127.0.0.1 -p "$pg_port" -U "$pg_user" -d postgres \
        -c "DROP DATABASE IF EXISTS $AGENTSTREAM_PG_TEST_DB WITH (FORCE)" >/dev/null 2>&1 || true
    if [ -n "${AGENTSTREAM_PG_TEMP_CLUSTER:-}" ]; then $AGENTSTREAM_PG_TEMP_CLUSTER >/dev/null 2>&1 || true; fi
}
