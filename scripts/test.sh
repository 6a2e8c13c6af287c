#!/usr/bin/env bash
# Runs every test: unit tests, the API suite on SQLite and on PostgreSQL
# (a fresh database, made by scripts/postgres.sh), and mock-llm's own tests.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/postgres.sh
source scripts/postgres.sh
ensure_postgres
cargo test --workspace --locked "$@"
