#!/usr/bin/env bash
# Fetches the chat page's two libraries, pinned, from the npm registry into
# crates/agentstream/assets/vendor/: marked (Markdown to HTML) and DOMPurify
# (which sanitizes that HTML). Their browser builds are copied as published,
# license header included, less the source-map comment (the maps are not
# served). To update, change a version below, run this, run the browser
# tests and commit the result.
set -euo pipefail
cd "$(dirname "$0")/.."

MARKED_VERSION=18.2.1
DOMPURIFY_VERSION=3.5.0

vendor=crates/agentstream/assets/vendor
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

(cd "$work" && npm pack --silent "marked@$MARKED_VERSION" "dompurify@$DOMPURIFY_VERSION" >/dev/null)
mkdir -p "$work/marked" "$work/dompurify" "$vendor"
tar -xzf "$work/marked-$MARKED_VERSION.tgz" -C "$work/marked"
tar -xzf "$work/dompurify-$DOMPURIFY_VERSION.tgz" -C "$work/dompurify"

strip_map() { sed '/^\/\/# sourceMappingURL=/d' "$1" >"$2"; }
strip_map "$work/marked/package/lib/marked.umd.js" "$vendor/marked.umd.js"
strip_map "$work/dompurify/package/dist/purify.min.js" "$vendor/purify.min.js"
cp "$work/marked/package/LICENSE" "$vendor/marked.LICENSE"
cp "$work/dompurify/package/LICENSE" "$vendor/dompurify.LICENSE"

head -n 2 "$vendor/marked.umd.js" | tail -n 1
head -c 60 "$vendor/purify.min.js"; echo
