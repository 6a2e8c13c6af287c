#!/usr/bin/env bash
# The contract check: schemathesis (from PyPI, pinned) fuzzes the live server
# from the server's own /openapi.json, with API keys on. It fails on any
# finding (a 5xx, a response that breaks the schema, an undocumented status
# or content type, …), if the server crashes or exits non-zero on SIGTERM,
# or if it logged an ERROR line.
#
#   scripts/contract.sh                 # about a minute on 2 cores
#   CONTRACT_EXAMPLES=200 scripts/contract.sh
#   CONTRACT_SEED=random scripts/contract.sh
#
# CONTRACT_EXAMPLES: test cases per operation and phase (default 50).
# CONTRACT_SEED: the generator's seed (default 1, so CI is repeatable);
# "random" for a new one each run (schemathesis prints it).
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
examples=${CONTRACT_EXAMPLES:-50}
seed=${CONTRACT_SEED:-1}
venv=target/contract-venv

say() { printf 'contract: %s\n' "$*" >&2; }

# The fuzzer, in a venv of its own under target/ (kept between runs).
if [[ ! -x $venv/bin/schemathesis ]] ||
    [[ $("$venv/bin/schemathesis" --version 2>/dev/null) != *"$SCHEMATHESIS_VERSION"* ]]; then
    say "installing schemathesis $SCHEMATHESIS_VERSION into $venv"
    rm -rf "$venv"
    if ! python3 -m venv "$venv" 2>/dev/null; then
        # Debian splits venv support out of python3.
        rm -rf "$venv"
        if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
            apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
        fi
        python3 -m venv "$venv"
    fi
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        "schemathesis==$SCHEMATHESIS_VERSION"
fi

cargo build --locked -p agentstream
server=target/debug/agentstream

work=$(mktemp -d)
pid=
cleanup() {
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

database="sqlite://$work/contract.db"
key=$("$server" keys create --user contract --database-url "$database" 2>"$work/keys.log")
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"

RUST_LOG=info "$server" serve \
    --bind "127.0.0.1:$port" \
    --database-url "$database" \
    --log-format json \
    --scripted-delay-ms 0 \
    --max-runs-per-user 100000 \
    >"$work/server.log" 2>&1 &
pid=$!

for _ in $(seq 1 100); do
    if curl -fsS "$base/healthz" >/dev/null 2>&1; then
        break
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
        say "the server did not start:"
        cat "$work/server.log" >&2
        exit 1
    fi
    sleep 0.1
done
curl -fsS "$base/readyz" >/dev/null
say "server on $base (pid $pid); fuzzing with $examples examples per operation, seed $seed"

seed_args=(--seed "$seed")
if [[ $seed == random ]]; then
    seed_args=()
fi

status=0
# One worker: with two, Hypothesis parses lambdas' source (ast.parse) in two
# threads at once, which CPython 3.11 can fail with "SystemError: AST
# constructor recursion depth mismatch" (a "Runtime Error" in the report,
# seen now and then on POST /v1/chat/completions).
"$venv/bin/schemathesis" --config-file scripts/contract.toml run "$base/openapi.json" \
    --header "Authorization: Bearer $key" \
    --checks all \
    --max-examples "$examples" \
    "${seed_args[@]}" \
    --workers 1 \
    --request-timeout 30 \
    --generation-database none \
    --no-color || status=$?

if ! kill -0 "$pid" 2>/dev/null; then
    say "FAILED: the server died during the run; its log:"
    tail -n 50 "$work/server.log" >&2
    exit 1
fi
kill -TERM "$pid"
server_status=0
wait "$pid" || server_status=$?
pid=
if [[ $server_status -ne 0 ]]; then
    say "FAILED: the server exited $server_status on SIGTERM; its log:"
    tail -n 50 "$work/server.log" >&2
    exit 1
fi
if grep -q '"level":"ERROR"' "$work/server.log"; then
    say "FAILED: the server logged ERROR lines:"
    grep '"level":"ERROR"' "$work/server.log" >&2
    exit 1
fi
if [[ $status -ne 0 ]]; then
    say "FAILED: schemathesis found problems (above)"
    exit "$status"
fi
say "passed: no finding, no crash, no ERROR line; the server stopped cleanly"
