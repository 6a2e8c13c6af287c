#!/usr/bin/env bash
# Runs every test: unit tests, the API suite on SQLite and on PostgreSQL
# (a fresh database, made by scripts/postgres.sh; several nodes, behind
# nginx too; through PgBouncer in transaction mode, from scripts/pgbouncer.sh;
# with real MCP servers from scripts/mcp-servers.sh), the terminal client,
# the OpenAI-compatible API through the official `openai` Python SDK, the
# AI SDK routes through the `ai` npm package (versions 6 and 5),
# mock-llm's and loadgen's own tests.
set -euo pipefail
cd "$(dirname "$0")/.."
# The multi-node test runs the shipped deploy/nginx.conf in front of two nodes.
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
    echo "test.sh: installing Debian's nginx-light for the load-balancer test" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null
fi
# shellcheck source=scripts/postgres.sh
source scripts/postgres.sh
ensure_postgres
# PgBouncer in transaction mode in front of it, for the pooler tests.
# shellcheck source=scripts/pgbouncer.sh
source scripts/pgbouncer.sh
ensure_pgbouncer
# The MCP servers the MCP tool tests attach (npm's "everything", PyPI's
# mcp-server-time), pinned, installed under target/ once.
# shellcheck source=scripts/mcp-servers.sh
source scripts/mcp-servers.sh
ensure_mcp_servers
# The official `openai` Python SDK (pinned, in target/openai-venv) for the
# OpenAI-compatible API's tests; installed once here rather than by the first
# test that needs it.
scripts/openai-venv.sh >/dev/null
# The Vercel AI SDK's `ai` package, versions 6 and 5 (pinned, under target/ai-sdk),
# for the AI SDK routes' tests; installed once here too.
scripts/ai-sdk.sh >/dev/null
cargo test --workspace --locked "$@"
# The page in headless Chromium, the OpenAPI contract under schemathesis, and
# a few seconds of every benchmark scenario so that the suite never rots.
scripts/browser-tests.sh
scripts/contract.sh
scripts/bench.sh --smoke
# No MCP server outlives the suite: every server a test or the page's tests
# started was reaped by agentstream's shutdown (or the test's own stop).
left=$(pgrep -af -- "$AGENTSTREAM_TEST_MCP_EVERYTHING|$AGENTSTREAM_TEST_MCP_TIME" || true)
if [[ -n $left ]]; then
    printf 'test.sh: MCP server processes left after the suite:\n%s\n' "$left" >&2
    exit 1
fi
echo "test.sh: no MCP server process left after the suite" >&2
