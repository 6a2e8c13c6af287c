#!/usr/bin/env bash
# The official `openai` Python SDK (from PyPI, pinned) in a venv of its own
# under target/, for the API tests that drive /v1/chat/completions with it
# (tests/api/openai_sdk.rs runs this script, then tests/openai/sdk_test.py).
# Installs once: a venv with the pinned version is kept between runs.
# Prints the venv's python on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

OPENAI_VERSION=3.57.0
venv=${OPENAI_VENV:-target/openai-venv}

say() { printf 'openai-venv: %s\n' "$*" >&2; }

installed() {
    [[ -x $venv/bin/python ]] &&
        [[ $("$venv/bin/python" -c 'import openai; print(openai.__version__)' 2>/dev/null) == "$OPENAI_VERSION" ]]
}

if ! installed; then
    say "installing openai $OPENAI_VERSION into $venv"
    rm -rf "$venv"
    if ! python3 -m venv "$venv" 2>/dev/null; then
        # Debian splits venv support out of python3.
        rm -rf "$venv"
        if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
            apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
        fi
        python3 -m venv "$venv"
    fi
    "$venv/bin/pip" install --quiet --disable-pip-version-check "openai==$OPENAI_VERSION"
    installed
fi
printf '%s\n' "$(cd "$venv" && pwd)/bin/python"
