#!/usr/bin/env bash
# The Vercel AI SDK's `ai` npm package, versions 6 and 5 (pinned), each in a
# folder of its own under target/ai-sdk/, for the tests that read
# agentstream's UI message streams with the package's own parser and its
# chat engine (tests/api/ai_sdk.rs runs tests/ai_sdk/ui_stream_test.mjs with
# each). Installs once: a folder with the pinned version is kept between runs.
# Prints each folder on a line of its own ("6 DIR", then "5 DIR").
set -euo pipefail
cd "$(dirname "$0")/.."

VERSIONS=(6.0.325 5.0.277)
root=${AI_SDK_DIR:-target/ai-sdk}

say() { printf 'ai-sdk: %s\n' "$*" >&2; }

for version in "${VERSIONS[@]}"; do
    major=${version%%.*}
    dir=$root/v$major
    installed=$(node -p "require('$PWD/$dir/node_modules/ai/package.json').version" 2>/dev/null || true)
    if [[ $installed != "$version" ]]; then
        say "installing ai@$version into $dir"
        rm -rf "$dir"
        mkdir -p "$dir"
        echo '{"private": true}' >"$dir/package.json"
        npm install --prefix "$dir" --no-audit --no-fund --loglevel=error --save-exact \
            "ai@$version" >/dev/null
        installed=$(node -p "require('$PWD/$dir/node_modules/ai/package.json').version")
        [[ $installed == "$version" ]] || { say "ai@$version did not install"; exit 1; }
    fi
    printf '%s %s\n' "$major" "$(cd "$dir" && pwd)"
done
