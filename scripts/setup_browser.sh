#!/usr/bin/env bash
# Installs the system parts the tests need, idempotently:
#   - Debian's Chromium at /usr/bin/chromium (Playwright drives this system browser; it never
#     downloads a browser build of its own) for the browser tests (tests/test_mobile*.py),
#   - Debian's qemu-user, to emulate a CPU without VNNI for tests/test_quantize.py (x86_64 only),
#   - the mobile app's npm dependencies (onnxruntime-web) from mobile/package-lock.json.
# A no-op taking milliseconds once both are present. Needs root for apt-get (CI runs as root).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=()
[ -x /usr/bin/chromium ] || packages+=(chromium fonts-dejavu-core)
if [ "$(uname -m)" = x86_64 ] && ! command -v qemu-x86_64 >/dev/null; then
    packages+=(qemu-user)
fi
if [ ${#packages[@]} -gt 0 ]; then
    echo "setup_browser: installing ${packages[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
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
