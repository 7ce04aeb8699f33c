#!/usr/bin/env bash
# Installs what the browser test (tests/test_mobile.py) needs, idempotently:
#   - Debian's Chromium at /usr/bin/chromium (Playwright drives this system browser; it never
#     downloads a browser build of its own),
#   - the mobile app's npm dependencies (onnxruntime-web) from mobile/package-lock.json.
# A no-op taking milliseconds once both are present. Needs root for apt-get (CI runs as root).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /usr/bin/chromium ]; then
    echo "setup_browser: installing chromium (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi

# Installed onnxruntime-web must be the version package-lock.json pins (else reinstall).
ort_version() {
    node -e 'const [f, k] = process.argv.slice(1); const j = require(f);
             process.stdout.write(String(k ? (j.packages[k] || {}).version : j.version))' "$@"
}
installed=""
if [ -f mobile/node_modules/onnxruntime-web/package.json ]; then
    installed=$(ort_version "$PWD/mobile/node_modules/onnxruntime-web/package.json")
fi
locked=$(ort_version "$PWD/mobile/package-lock.json" node_modules/onnxruntime-web)
if [ "$installed" != "$locked" ]; then
    echo "setup_browser: npm ci in mobile/"
    (cd mobile && npm ci --no-audit --no-fund --loglevel=error)
fi
