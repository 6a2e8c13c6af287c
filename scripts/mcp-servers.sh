#!/usr/bin/env bash
# Installs the MCP servers the tests attach to agents: reference servers
# that nobody on the project wrote, pinned, from the package registries.
# Source it and call ensure_mcp_servers: it exports
#   AGENTSTREAM_TEST_MCP_EVERYTHING  the npm "everything" server's entry
#                                    script (run it with node; `stdio` or
#                                    `streamableHttp` as its argument)
#   AGENTSTREAM_TEST_MCP_TIME        PyPI's mcp-server-time (a stdio server)
# Each is installed once under target/ and kept between runs; a wrong or
# missing version is installed again. Run it alone to install:
#   scripts/mcp-servers.sh

MCP_EVERYTHING_VERSION=2026.8.31
MCP_TIME_VERSION=2026.10.19

mcp_say() { printf 'mcp-servers: %s\n' "$*" >&2; }

ensure_mcp_servers() {
    local root dir venv entry installed
    root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    # The npm server, in a folder of its own (no package.json of the
    # project's is touched).
    dir=$root/target/mcp-servers
    entry=$dir/node_modules/@modelcontextprotocol/server-everything/dist/index.js
    installed=$(node -p "require('$dir/node_modules/@modelcontextprotocol/server-everything/package.json').version" 2>/dev/null || true)
    if [[ $installed != "$MCP_EVERYTHING_VERSION" ]]; then
        mcp_say "installing @modelcontextprotocol/server-everything@$MCP_EVERYTHING_VERSION into $dir"
        mkdir -p "$dir"
        [[ -f $dir/package.json ]] || echo '{"private": true}' >"$dir/package.json"
        npm install --prefix "$dir" --no-audit --no-fund --loglevel=error --save-exact \
            "@modelcontextprotocol/server-everything@$MCP_EVERYTHING_VERSION" >/dev/null
    fi
    [[ -f $entry ]] || { mcp_say "no $entry after the install"; return 1; }
    # The Python server, in a venv of its own.
    venv=$root/target/mcp-venv
    installed=$("$venv/bin/pip" show mcp-server-time 2>/dev/null | sed -n 's/^Version: //p' || true)
    if [[ ! -x $venv/bin/mcp-server-time || $installed != "$MCP_TIME_VERSION" ]]; then
        mcp_say "installing mcp-server-time==$MCP_TIME_VERSION into $venv"
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
            "mcp-server-time==$MCP_TIME_VERSION"
    fi
    export AGENTSTREAM_TEST_MCP_EVERYTHING=$entry
    export AGENTSTREAM_TEST_MCP_TIME=$venv/bin/mcp-server-time
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    set -euo pipefail
    ensure_mcp_servers
    echo "export AGENTSTREAM_TEST_MCP_EVERYTHING=$AGENTSTREAM_TEST_MCP_EVERYTHING"
    echo "export AGENTSTREAM_TEST_MCP_TIME=$AGENTSTREAM_TEST_MCP_TIME"
fi
