#!/usr/bin/env bash
# The chat page's end-to-end tests: headless Chromium (Debian's package)
# driven by playwright-core (from the npm registry) against the real server.
# Installs what is missing, then runs tests/browser/run.mjs, which builds the
# server, starts it on a free port with a temporary SQLite database (then
# again with a PostgreSQL schema of its own), and
# saves screenshots into target/screenshots/ (SCREENSHOTS=docs/screenshots
# refreshes the README's pictures on purpose).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /usr/bin/chromium ]; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
fi

(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
node tests/browser/run.mjs
# The same page on PostgreSQL: a schema of its own for each test's server.
if [[ -z ${AGENTSTREAM_TEST_POSTGRES_URL:-} ]]; then
    # shellcheck source=scripts/postgres.sh
    source scripts/postgres.sh
    ensure_postgres
fi
BROWSER_DATABASE=postgres node tests/browser/run.mjs
