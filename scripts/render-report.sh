#!/usr/bin/env bash
# Screenshot a padv HTML report with headless Chromium, to look at it.
#
#   scripts/render-report.sh [REPORT.html] [OUT.png]
#
# Without REPORT.html, writes the toyworld demo report first (through the
# apps_toyworld test). WINDOW=WIDTH,HEIGHT sets the page size (1200,2400).
# Needs chromium (`apt-get install -y chromium`); runs it as root-safe
# headless with networking and background services off.
set -euo pipefail
cd "$(dirname "$0")/.."

html=${1:-}
png=${2:-/tmp/padv-report.png}
if [ -z "$html" ]; then
    html=/tmp/padv-report.html
    PADV_REPORT_OUT=$html cargo test -q --test apps_toyworld the_report_is >/dev/null
fi
[ -f "$html" ] || { echo "no such report: $html" >&2; exit 1; }

browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
[ -n "$browser" ] || { echo "chromium not found: apt-get install -y chromium" >&2; exit 1; }

"$browser" --headless --no-sandbox --disable-gpu --disable-background-networking \
    --disable-component-update --disable-sync --no-first-run --hide-scrollbars \
    --screenshot="$png" --window-size="${WINDOW:-1200,2400}" \
    "file://$(realpath "$html")" 2>/dev/null
echo "$png"
