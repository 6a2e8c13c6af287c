#!/usr/bin/env bash
# The benchmark suite (issue 5; DESIGN.md "Performance method"): builds the binaries,
# starts mock-llm, the bare relay and agentstream (SQLite and PostgreSQL, pool 15 and 2,
# then two nodes on one PostgreSQL: issue 9, then the same load through each wire format:
# native, OpenAI Chat Completions and AI SDK, then steady traffic: issue 20), runs the
# load generator against each and writes BENCHMARKS.md.
#
#   scripts/bench.sh           the full suite, release build; about 12 minutes on 2 cores
#                              after the build (the encoders scenario takes 1.5 and steady
#                              traffic 6, neither with a time budget)
#   scripts/bench.sh --smoke   tiny loads for a few seconds on the dev build (CI): fails
#                              when any stream fails, writes the report to the results folder
#
# BENCH_OUT=DIR keeps the results (JSON summaries, logs, profile) in DIR; BENCH_PERF=0 skips
# the perf profile; BENCH_LEVELS="1 100 1000" overrides the concurrency ladder and
# BENCH_TWO_NODE_LEVELS="1 100" the two-node levels, BENCH_STEADY_LEVELS="200 500" the
# steady-state levels.
# BENCH_ONLY="GROUP ..." runs only these groups of scenarios, of: mock relay sqlite-15
# sqlite-2 pg-15 pg-2 two-node encoders steady (e.g. BENCH_ONLY=encoders: one agentstream process,
# a minute and a half in full mode, no PostgreSQL); the report then goes to the results
# folder, never to BENCHMARKS.md, which is always written from the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."

smoke=0
case "${1:-}" in
    --smoke) smoke=1 ;;
    "") ;;
    *) echo "usage: scripts/bench.sh [--smoke]" >&2; exit 2 ;;
esac

groups="mock relay sqlite-15 sqlite-2 pg-15 pg-2 two-node encoders steady"
only=${BENCH_ONLY:-}
only=${only//,/ }
for group in $only; do
    case " $groups " in
        *" $group "*) ;;
        *) echo "bench: BENCH_ONLY: no group $group; the groups are: $groups" >&2; exit 2 ;;
    esac
done
# want GROUP: whether GROUP runs (all of them without BENCH_ONLY).
want() { [ -z "$only" ] || [[ " $only " == *" $1 "* ]]; }

# Every stream is a socket in each process it crosses, two in agentstream and the relay.
ulimit -n "$(ulimit -Hn)"
fd_limit=$(ulimit -n)

if [ "$smoke" = 1 ]; then
    profile=dev
    levels=${BENCH_LEVELS:-"1 10"}
    ramp_ms=100               # ladder levels above 1 start within this
    stream_model="mock;deltas=8;pace_ms=5"
    stall_ms=50               # 10x the pacing
    starts_workers=4 starts_ms=500
    idle_streams=10 idle_ramp_ms=100 idle_hold_ms=300
    ladder_budget_s=60 suite_budget_s=120
    two_node_levels=${BENCH_TWO_NODE_LEVELS:-"1 4"} two_node_budget_s=30
    encoder_workers=4 encoder_ramp_ms=50 encoder_ms=500 encoder_warmup_ms=300 encoder_rounds=2
    steady_levels=${BENCH_STEADY_LEVELS:-"4"} steady_ramp_ms=100 steady_ms=1000
    steady_model="mock;deltas=8;pace_ms=5"
else
    profile=release
    levels=${BENCH_LEVELS:-"1 100 200 500 1000 2000 5000 10000"}
    ramp_ms=1000
    stream_model="mock;deltas=64;pace_ms=20"
    stall_ms=200
    starts_workers=64 starts_ms=5000
    idle_streams=2000 idle_ramp_ms=2000 idle_hold_ms=3000
    # No higher ladder level once a target's ladder has taken this long, nor once the suite
    # has: what is left after that takes under two minutes.
    ladder_budget_s=75 suite_budget_s=420
    # Levels of the two-node scenario (each runs twice: same-node and cross-node); no
    # higher level once it has taken this long.
    two_node_levels=${BENCH_TWO_NODE_LEVELS:-"1 100 200 500"} two_node_budget_s=60
    # The encoders scenario: rounds of one run per wire format, each run a closed loop of
    # this many workers for this long (each stream lasts about 1.5 s), after a warm-up
    # through the native format.
    encoder_workers=200 encoder_ramp_ms=1000 encoder_ms=5000 encoder_warmup_ms=3000
    encoder_rounds=3
    # Steady traffic (issue 20): a closed loop at each level for steady_ms, the workers
    # started over steady_ramp_ms; each run one tool call, then 50 deltas 20 ms apart.
    steady_levels=${BENCH_STEADY_LEVELS:-"200 500 1000 2000"} steady_ramp_ms=2000 steady_ms=12000
    steady_model="mock;deltas=50;pace_ms=20"
fi
starts_model="mock;deltas=2;tools=never"
# The upstream waits 30 s before its first chunk; the streams are measured and closed
# (--hold-ms) long before that.
idle_model="mock;ttft_ms=30000;deltas=2;tools=never"
stream_timeout_ms=20000       # an unloaded stream lasts 1.4 s

mock_port=${BENCH_MOCK_PORT:-18089}
relay_port=${BENCH_RELAY_PORT:-18090}
server_port=${BENCH_SERVER_PORT:-18000}
server_b_port=${BENCH_SERVER_B_PORT:-18001}    # the second node of the two-node scenario
mock_url="http://127.0.0.1:$mock_port/v1"

out=${BENCH_OUT:-$(mktemp -d /tmp/agentstream-bench.XXXXXX)}
mkdir -p "$out/results" "$out/logs" "$out/db" "$out/config"
# A kept folder starts afresh: old summaries would mix into the report, and an old
# database would not be the fresh one each configuration gets.
rm -rf "${out:?}/results/"* "${out:?}/logs/"* "${out:?}/db/"*
echo "bench: results in $out" >&2

# --- build -------------------------------------------------------------------------------
build_start=$SECONDS
cargo build --locked --profile "$profile" -p agentstream -p mock-llm -p loadgen --bins
build_seconds=$((SECONDS - build_start))
target_dir=$(cargo metadata --format-version 1 --no-deps \
    | grep -o '"target_directory":"[^"]*"' | cut -d'"' -f4)
bin="$target_dir/$([ "$profile" = dev ] && echo debug || echo "$profile")"

# --- processes ---------------------------------------------------------------------------
pids=()
pg_extra_dbs=()
cleanup() {
    local pid db
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    for db in "${pg_extra_dbs[@]}"; do
        psql -q -h 127.0.0.1 -p "$pg_port" -U "$pg_user" -d postgres \
            -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
    done
    if declare -F cleanup_postgres >/dev/null; then cleanup_postgres; fi
}
trap cleanup EXIT

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_port PORT PID NAME: until PORT accepts connections, failing if PID exits first.
wait_port() {
    for _ in $(seq 1 300); do
        port_open "$1" && return 0
        kill -0 "$2" 2>/dev/null || { echo "bench: $3 exited; see $out/logs/$3.log" >&2; exit 1; }
        sleep 0.1
    done
    echo "bench: $3 did not listen on port $1" >&2
    exit 1
}

# start NAME PORT COMMAND...: starts a server in the background; sets $started to its PID.
start() {
    local name=$1 port=$2
    shift 2
    if port_open "$port"; then
        echo "bench: port $port is taken; set BENCH_*_PORT" >&2
        exit 1
    fi
    "$@" >"$out/logs/$name.log" 2>&1 &
    started=$!
    pids+=("$started")
    wait_port "$port" "$started" "$name"
}

stop() {
    kill -TERM "$1"
    wait "$1" || { echo "bench: a server exited with status $? while stopping" >&2; exit 1; }
    local kept=()
    for pid in "${pids[@]}"; do [ "$pid" = "$1" ] || kept+=("$pid"); done
    pids=("${kept[@]}")
}

# --- load --------------------------------------------------------------------------------
# loadgen_run NAME ARGS...: one load run; its summary goes to the results, so to the report.
loadgen_run() {
    local file=$1
    shift
    loadgen_to "$out/results/$file.json" "$@"
}

# loadgen_to PATH ARGS...: one load run, its summary written to PATH; with --smoke it fails
# when any stream failed.
loadgen_to() {
    local path=$1
    shift
    local strict=()
    [ "$smoke" = 1 ] && strict=(--require-ok)
    "$bin/loadgen" run "$@" "${strict[@]}" --out "$path" >/dev/null
}

# ladder TARGET PID ARGS...: every level up to 1,000 streams (the latency targets are read
# at 1,000), then higher ones until one is not sustained.
ladder() {
    local target=$1 pid=$2
    shift 2
    local began=$SECONDS level ramp
    for level in $levels; do
        if [ $((SECONDS - began)) -gt "$ladder_budget_s" ] \
            || [ $((SECONDS - suite_start)) -gt "$suite_budget_s" ]; then
            echo "bench: $target: time budget spent before $level streams" >&2
            break
        fi
        if [ $((level * 2 + 1000)) -gt "$fd_limit" ]; then
            echo "bench: $target: $level streams need more than $fd_limit descriptors" >&2
            break
        fi
        ramp=$([ "$level" = 1 ] && echo 0 || echo "$ramp_ms")
        echo "bench: $target ladder: $level streams" >&2
        loadgen_run "$target-ladder-$(printf %05d "$level")" --target "$target" \
            --scenario ladder --streams "$level" --ramp-ms "$ramp" \
            --timeout-ms "$stream_timeout_ms" --stall-ms "$stall_ms" --pid "$pid" "$@"
        if [ "$level" -ge 1000 ] \
            && ! grep -q '"sustained": true' "$out/results/$target-ladder-$(printf %05d "$level").json"; then
            echo "bench: $target: $level streams not sustained; the ladder stops" >&2
            break
        fi
    done
}

chat_body() {
    printf '{"model":"%s","stream":true,"messages":[{"role":"user","content":"hello {i}"}]}' "$1"
}

# upstream_scenarios TARGET PID URL: the ladder, starts and idle streams of an OpenAI endpoint.
upstream_scenarios() {
    local target=$1 pid=$2 url=$3
    echo "bench: $target idle streams" >&2
    loadgen_run "$target-idle" --target "$target" --scenario idle --streams "$idle_streams" \
        --ramp-ms "$idle_ramp_ms" --hold-ms "$idle_hold_ms" --pid "$pid" \
        --url "$url" --body "$(chat_body "$idle_model")" --protocol openai
    ladder "$target" "$pid" --url "$url" --body "$(chat_body "$stream_model")" --protocol openai
    echo "bench: $target run starts" >&2
    loadgen_run "$target-starts" --target "$target" --scenario starts \
        --streams "$starts_workers" --duration-ms "$starts_ms" --timeout-ms "$stream_timeout_ms" \
        --pid "$pid" --url "$url" --body "$(chat_body "$starts_model")" --protocol openai
}

write_config() {
    cat >"$out/config/$1.toml" <<TOML
[providers.mock]
kind = "openai"
base_url = "$mock_url"

[agents.onboarding]
provider = "mock"
model = "$2"
tools = ["update_profile"]

[agents.chat]
provider = "mock"
model = "$3"
TOML
}
write_config stream "$stream_model" "$starts_model"
write_config steady "$steady_model" "$starts_model"
# The steady scenario's users: HS256 JWTs, one per worker (see steady_scenarios).
write_config steady-users "$steady_model" "$starts_model"
cat >>"$out/config/steady-users.toml" <<TOML

[auth.jwt]
secret_env = "BENCH_JWT_SECRET"
issuer = "loadgen"
TOML
write_config idle "$stream_model" "$idle_model"

# Every stream but the steady scenario's -users targets' comes from the one local user:
# start_agentstream lifts the per-user run limit to this (the default is 8).
runs_per_user=1000000

# start_agentstream NAME DATABASE_URL POOL OVERFLOW CONFIG [DRAIN_SECS [PORT [ARGS...]]]
start_agentstream() {
    local name=$1 database=$2 pool=$3 overflow=$4 config=$5 drain=${6:-10}
    local port=${7:-$server_port}
    shift $(($# < 7 ? $# : 7))
    # Lift the per-user and per-server run limits above the largest level (environment,
    # so an older binary still starts).
    start "$name" "$port" env RUST_LOG="${BENCH_RUST_LOG:-info}" \
        AGENTSTREAM_MAX_RUNS_PER_USER="$runs_per_user" AGENTSTREAM_MAX_ACTIVE_RUNS=1000000 \
        AGENTSTREAM_DRAIN_SECS="$drain" \
        "$bin/agentstream" --bind "127.0.0.1:$port" --database-url "$database" \
        --db-pool-size "$pool" --db-max-overflow "$overflow" --config "$out/config/$config.toml" \
        "$@"
}

profiles=()
# agentstream_scenarios TARGET DATABASE_URL POOL OVERFLOW
agentstream_scenarios() {
    local target=$1 url=$2 pool=$3 overflow=$4 pid base="http://127.0.0.1:$server_port"
    # Memory first, on a fresh process: the idle server is not yet grown by the ladder.
    # The idle runs wait 30 s for their model: interrupt them at once at stop.
    start_agentstream "$target-idle" "$url" "$pool" "$overflow" idle 0
    pid=$started
    echo "bench: $target idle streams" >&2
    loadgen_run "$target-idle" --target "$target" --scenario idle --streams "$idle_streams" \
        --ramp-ms "$idle_ramp_ms" --hold-ms "$idle_hold_ms" --pid "$pid" \
        --setup-url "$base/v1/conversations" --setup-body '{"kind":"chat"}' \
        --url "$base/v1/conversations/{id}/runs" --body '{"input":"hello {i}"}' \
        --header 'accept: text/event-stream' --protocol agentstream
    stop "$pid"

    start_agentstream "$target" "$url" "$pool" "$overflow" stream
    pid=$started
    local perf_pid=""
    if [ "$pool" = 5 ] && [ "${BENCH_PERF:-1}" = 1 ] && [ "$smoke" = 0 ] \
        && command -v perf >/dev/null; then
        # -g: the kernel's call chains (user-space ones need frame pointers).
        perf record -g -e cpu-clock -F 499 -p "$pid" -o "$out/logs/$target.perf.data" \
            >"$out/logs/$target.perf.log" 2>&1 &
        perf_pid=$!
    fi
    ladder "$target" "$pid" \
        --setup-url "$base/v1/conversations" --setup-body '{"kind":"onboarding"}' \
        --url "$base/v1/conversations/{id}/runs" --body '{"input":"Ada Lovelace {i}"}' \
        --header 'accept: text/event-stream' --protocol agentstream --gap-event delta
    if [ -n "$perf_pid" ]; then
        kill -INT "$perf_pid" && wait "$perf_pid" || true
        profiles+=("$target")
    fi
    # A ladder level past what the machine holds leaves runs going after its clients gave
    # up (they continue on disconnect): run starts are measured once they have ended.
    wait_idle "$target" "$base"
    echo "bench: $target run starts" >&2
    loadgen_run "$target-starts" --target "$target" --scenario starts \
        --streams "$starts_workers" --duration-ms "$starts_ms" --timeout-ms "$stream_timeout_ms" \
        --pid "$pid" --url "$base/api/v1/chat/stream" --body '{"message":"hello {i}"}' \
        --protocol agentstream
    stop "$pid"
}

# wait_idle TARGET BASE_URL: until the server drives no run (its agentstream_runs_active gauge).
wait_idle() {
    for _ in $(seq 1 1200); do
        [ "$(curl -fsS "$2/metrics" | grep -cx 'agentstream_runs_active 0')" = 1 ] && return 0
        sleep 0.1
    done
    echo "bench: $1 still drives runs after two minutes" >&2
    exit 1
}

# two_node_scenarios DATABASE_URL: nodes A and B on one database. Each stream creates a
# conversation on A and starts its run there (202, not timed), then follows the run's events
# on A (same-node) or on B (cross-node, delivered through NOTIFY and the store).
two_node_scenarios() {
    local url=$1 a="http://127.0.0.1:$server_port" b="http://127.0.0.1:$server_b_port"
    local began=$SECONDS pid_a pid_b level ramp side base pid
    start_agentstream two-node-a "$url" 5 10 stream 10 "$server_port" --node-id a
    pid_a=$started
    start_agentstream two-node-b "$url" 5 10 stream 10 "$server_b_port" --node-id b
    pid_b=$started
    for level in $two_node_levels; do
        if [ $((SECONDS - began)) -gt "$two_node_budget_s" ]; then
            echo "bench: two nodes: time budget spent before $level streams" >&2
            break
        fi
        if [ $((level * 3 + 1000)) -gt "$fd_limit" ]; then
            echo "bench: two nodes: $level streams need more than $fd_limit descriptors" >&2
            break
        fi
        ramp=$([ "$level" = 1 ] && echo 0 || echo "$ramp_ms")
        for side in same cross; do
            if [ "$side" = same ]; then base=$a pid=$pid_a; else base=$b pid=$pid_b; fi
            echo "bench: two nodes, $side-node: $level streams" >&2
            loadgen_run "two-node-$side-$(printf %05d "$level")" --target "$side-node" \
                --scenario two-node --streams "$level" --ramp-ms "$ramp" \
                --timeout-ms "$stream_timeout_ms" --stall-ms "$stall_ms" --pid "$pid" \
                --setup-url "$a/v1/conversations" --setup-body '{"kind":"onboarding"}' \
                --setup-url "$a/v1/conversations/{id}/runs" \
                --setup-body '{"input":"Ada Lovelace {i}"}' \
                --method GET --url "$base/v1/runs/{id}/events" \
                --protocol agentstream --gap-event delta
        done
    done
    stop "$pid_b"
    stop "$pid_a"
}

# encoders_scenario DATABASE_URL: the same load through each wire format on one agentstream
# process with sqlite-15's settings (pool 5 + 10) and the ladder's agent and model:
# $encoder_rounds rounds of one run per format, each round in another order so that the
# machine's other work and the database's growth fall on every format alike; a run is a
# closed loop of $encoder_workers workers for $encoder_ms ms. Each format's CPU per event
# counts the events the server stored (its /metrics), which are the same for every format,
# not the SSE messages, which are not. Each stream is one request that creates its
# conversation in the run's transaction (the AI SDK's by a chat ID the fresh database has
# not seen: the round and the stream's number): `native`, the baseline, is the native format
# on the seed's onboarding route. `native-setup` is the native format on the ladder's route,
# the conversation created by a request of its own first: for comparison, not a target.
encoders_scenario() {
    local url=$1 base="http://127.0.0.1:$server_port" pid round encoder body
    local -a format
    start_agentstream encoders "$url" 5 10 stream
    pid=$started
    local common=(--scenario encoders --streams "$encoder_workers" --ramp-ms "$encoder_ramp_ms"
        --timeout-ms "$stream_timeout_ms" --stall-ms "$stall_ms" --pid "$pid"
        --metrics-url "$base/metrics")
    local native=(--url "$base/api/v1/chat/onboarding/stream"
        --body '{"message":"Ada Lovelace {i}"}' --protocol agentstream --gap-event delta)
    local native_setup=(--setup-url "$base/v1/conversations" --setup-body '{"kind":"onboarding"}'
        --url "$base/v1/conversations/{id}/runs" --body '{"input":"Ada Lovelace {i}"}'
        --header 'accept: text/event-stream' --protocol agentstream --gap-event delta)
    local openai=(--url "$base/v1/chat/completions"
        --body '{"model":"onboarding","stream":true,"messages":[{"role":"user","content":"Ada Lovelace {i}"}]}'
        --protocol openai --gap-event content)
    local ai_sdk=(--url "$base/v1/ai-sdk/chat" --protocol ai-sdk --gap-event text-delta)
    # The first runs of a fresh process pay for its growth (threads, connections, memory):
    # a warm-up through the native format, kept out of the report.
    echo "bench: encoders warm-up" >&2
    loadgen_to "$out/logs/encoders-warm-up.json" --target native \
        --duration-ms "$encoder_warmup_ms" "${common[@]}" "${native[@]}"
    wait_idle encoders "$base"
    local order=(native openai ai-sdk native-setup)
    for round in $(seq -w 1 "$encoder_rounds"); do
        for encoder in "${order[@]}"; do
            echo "bench: encoders, round $round: $encoder" >&2
            case $encoder in
                native) format=("${native[@]}") ;;
                native-setup) format=("${native_setup[@]}") ;;
                openai) format=("${openai[@]}") ;;
                ai-sdk)
                    body='{"id":"bench-R-{i}","agent":"onboarding","messages":[{"id":"message-R-{i}",'
                    body+='"role":"user","parts":[{"type":"text","text":"Ada Lovelace {i}"}]}]}'
                    format=("${ai_sdk[@]}" --body "${body//-R-/-$round-}")
                    ;;
            esac
            # The report pairs round n of each format with round n of the native one by
            # these names' order.
            loadgen_run "encoders-$round-$encoder" --target "$encoder" \
                --duration-ms "$encoder_ms" "${common[@]}" "${format[@]}"
            wait_idle encoders "$base"
        done
        order=("${order[@]:1}" "${order[0]}")
    done
    stop "$pid"
}

# steady_run TARGET PID LEVEL ARGS...: one closed loop of LEVEL workers for steady_ms.
steady_run() {
    local target=$1 pid=$2 level=$3
    shift 3
    if [ $((level * 2 + 1000)) -gt "$fd_limit" ]; then
        echo "bench: steady $target: $level streams need more than $fd_limit descriptors" >&2
        return
    fi
    echo "bench: steady traffic, $target: $level streams" >&2
    loadgen_run "steady-$target-$(printf %05d "$level")" --target "$target" --scenario steady \
        --streams "$level" --ramp-ms "$steady_ramp_ms" --duration-ms "$steady_ms" \
        --timeout-ms "$stream_timeout_ms" --stall-ms 100 --sustained-gap-p99-ms 100 \
        --sustained-ttfe-p99-ms 250 --pid "$pid" "$@"
}

# steady_scenarios SQLITE_URL PG_URL: steady traffic at each level, the floor (mock-llm
# direct and through the relay) and agentstream on SQLite and PostgreSQL (pool 5 + 10)
# through the seed's onboarding route: a new conversation per stream, one tool call. The
# plain targets' streams all come from the one local user, so every run's tool call writes
# the same profile row; the -users targets' workers each sign in as a user of their own
# (an HS256 JWT per worker, `--bearer-file`) under the default per-user run limit.
steady_scenarios() {
    local sqlite=$1 pg=$2 base="http://127.0.0.1:$server_port" level pid target url config
    # Seen by start_agentstream (bash's dynamic scope), set per target below.
    local runs_per_user users max_level=0 tokens="$out/config/steady-tokens.txt"
    for level in $steady_levels; do [ "$level" -gt "$max_level" ] && max_level=$level; done
    BENCH_JWT_SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
    export BENCH_JWT_SECRET
    python3 - "$max_level" "$tokens" <<'PY'
import base64, hashlib, hmac, json, os, sys, time
count, path = int(sys.argv[1]), sys.argv[2]
secret = os.environ["BENCH_JWT_SECRET"].encode()
b64 = lambda raw: base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
expires = int(time.time()) + 4 * 3600
with open(path, "w") as out:
    for n in range(count):
        claims = {"sub": f"loadgen-{n}", "iss": "loadgen", "exp": expires}
        signed = f"{header}.{b64(json.dumps(claims).encode())}"
        signature = hmac.new(secret, signed.encode(), hashlib.sha256).digest()
        out.write(f"{signed}.{b64(signature)}\n")
PY
    local openai=(--url "$mock_url/chat/completions" --body "$(chat_body "$steady_model")"
        --protocol openai --gap-event content)
    for level in $steady_levels; do steady_run mock "$mock_pid" "$level" "${openai[@]}"; done
    start relay "$relay_port" "$bin/loadgen" relay --bind "127.0.0.1:$relay_port" --upstream "$mock_url"
    pid=$started
    for level in $steady_levels; do
        steady_run relay "$pid" "$level" --url "http://127.0.0.1:$relay_port/v1/chat/completions" \
            --body "$(chat_body "$steady_model")" --protocol openai --gap-event content
    done
    stop "$pid"
    for target in sqlite-15 sqlite-15-users pg-15 pg-15-users; do
        users=()
        case $target in
            sqlite-15) url=$sqlite config=steady runs_per_user=1000000 ;;
            pg-15) url=$pg config=steady runs_per_user=1000000 ;;
            # A database of their own: the one-user targets' rows would slow them.
            sqlite-15-users) url=${sqlite%.db}-users.db config=steady-users runs_per_user=8 ;;
            pg-15-users) url=${pg}_users config=steady-users runs_per_user=8 ;;
        esac
        [ "$config" = steady-users ] && users=(--bearer-file "$tokens")
        start_agentstream "steady-$target" "$url" 5 10 "$config"
        pid=$started
        # PostgreSQL's own CPU: every process of its postmaster's user.
        local database_cpu=()
        if [[ $target == pg-* ]] && postmaster=$(pgrep -o -x postgres); then
            database_cpu=(--user-cpu "$(ps -o uid= -p "$postmaster" | tr -d ' ')")
        fi
        for level in $steady_levels; do
            steady_run "$target" "$pid" "$level" --url "$base/api/v1/chat/onboarding/stream" \
                --body '{"message":"Ada Lovelace {i}"}' --protocol agentstream --gap-event delta \
                --metrics-url "$base/metrics" "${database_cpu[@]}" "${users[@]}"
            wait_idle "steady-$target" "$base"
        done
        stop "$pid"
    done
}

# --- the suite ---------------------------------------------------------------------------
if want pg-15 || want pg-2 || want two-node || want steady; then
    # shellcheck source=scripts/postgres.sh
    source scripts/postgres.sh
    ensure_postgres
    trap cleanup EXIT
    # A fresh database for each PostgreSQL configuration: pool 2 and the two nodes get their own.
    for db in "${AGENTSTREAM_PG_TEST_DB}_pool2" "${AGENTSTREAM_PG_TEST_DB}_nodes" \
        "${AGENTSTREAM_PG_TEST_DB}_steady" "${AGENTSTREAM_PG_TEST_DB}_steady_users"; do
        pg_extra_dbs+=("$db")
        psql -q -h 127.0.0.1 -p "$pg_port" -U "$pg_user" -d postgres -c "CREATE DATABASE $db" >/dev/null
    done
    pg_url_15=$AGENTSTREAM_TEST_POSTGRES_URL
    pg_url_2="${AGENTSTREAM_TEST_POSTGRES_URL%/*}/${AGENTSTREAM_PG_TEST_DB}_pool2"
    pg_url_nodes="${AGENTSTREAM_TEST_POSTGRES_URL%/*}/${AGENTSTREAM_PG_TEST_DB}_nodes"
    pg_url_steady="${AGENTSTREAM_TEST_POSTGRES_URL%/*}/${AGENTSTREAM_PG_TEST_DB}_steady"
fi

suite_start=$SECONDS
start mock-llm "$mock_port" "$bin/mock-llm" --bind "127.0.0.1:$mock_port"
mock_pid=$started
if want mock; then upstream_scenarios mock "$mock_pid" "$mock_url/chat/completions"; fi
if want relay; then
    start relay "$relay_port" "$bin/loadgen" relay --bind "127.0.0.1:$relay_port" --upstream "$mock_url"
    relay_pid=$started
    upstream_scenarios relay "$relay_pid" "http://127.0.0.1:$relay_port/v1/chat/completions"
    stop "$relay_pid"
fi

if want sqlite-15; then agentstream_scenarios sqlite-15 "sqlite://$out/db/sqlite-15.db" 5 10; fi
if want sqlite-2; then agentstream_scenarios sqlite-2 "sqlite://$out/db/sqlite-2.db" 2 0; fi
if want pg-15; then agentstream_scenarios pg-15 "$pg_url_15" 5 10; fi
if want pg-2; then agentstream_scenarios pg-2 "$pg_url_2" 2 0; fi
if want two-node; then two_node_scenarios "$pg_url_nodes"; fi
if want encoders; then encoders_scenario "sqlite://$out/db/encoders.db"; fi
if want steady; then steady_scenarios "sqlite://$out/db/steady.db" "$pg_url_steady"; fi
stop "$mock_pid"
suite_seconds=$((SECONDS - suite_start))

# --- the report --------------------------------------------------------------------------
profile_args=()
if [ "${#profiles[@]}" -gt 0 ]; then
    perf_view() {
        perf report -i "$out/logs/$target.perf.data" --stdio --no-children "$@" 2>/dev/null \
            | grep -v '^#' | grep -v '^$' | sed 's/[[:space:]-]*$//'
    }
    for target in "${profiles[@]}"; do
        echo "==== agentstream $target, its whole ladder ===="
        echo "-- CPU samples by thread --"
        perf_view --sort comm -g none | head -6
        echo "-- by binary --"
        perf_view --sort dso -g none | head -6
        echo "-- by function --"
        perf_view --sort dso,symbol -g none --percent-limit 1 | head -20
        echo "-- call chains into the top functions, read downwards: who called it (>= 3%) --"
        perf_view --sort symbol -g caller,3,callee,function,percent --percent-limit 5 | head -90
        echo
    done >"$out/logs/profile.txt"
    profile_args=(--profile "$out/logs/profile.txt" --profile-title \
        "\`perf record -g -e cpu-clock -F 499 -p PID\` on the agentstream process over its \
whole concurrency ladder (the heaviest load it takes): shares of the process's CPU samples \
by thread, binary and function (\`[k]\` is the kernel), then the kernel call chains that \
lead to the top functions. With cpu-clock sampling in a VM, time spent with interrupts off \
shows up where they are turned back on (\`finish_task_switch\`, \`_raw_spin_unlock_irqrestore\`): \
read those as context switches and wake-ups.")
fi
report=BENCHMARKS.md
extra_args=(--build-seconds "$build_seconds" --note "$(cat docs/benchmark-notes.md)")
if [ "$smoke" = 1 ]; then
    report="$out/BENCHMARKS.md"
    extra_args=(--smoke)
elif [ -n "$only" ]; then
    # Part of the suite: its report beside the results, BENCHMARKS.md left as it is.
    report="$out/BENCHMARKS.md"
fi
"$bin/loadgen" report --results "$out/results" --out "$report" \
    --command "${only:+BENCH_ONLY=\"$only\" }scripts/bench.sh${1:+ $1}" \
    --date "$(date -u '+%Y-%m-%d %H:%M UTC')" \
    --revision "$(git describe --always --dirty 2>/dev/null || echo unknown)" \
    --suite-seconds "$suite_seconds" "${extra_args[@]}" "${profile_args[@]}"
echo "bench: wrote $report in ${suite_seconds}s (build ${build_seconds}s)" >&2
