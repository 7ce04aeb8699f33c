#!/usr/bin/env bash
# Installs the system parts the tests need, idempotently:
#   - Debian's Chromium at /usr/bin/chromium (Playwright drives this system browser; it never
#     downloads a browser build of its own) for the browser tests (tests/test_mobile*.py),
#   - Debian's qemu-user, to emulate a CPU without VNNI for tests/test_quantize.py (x86_64 only),
#   - the mobile app's npm dependencies (onnxruntime-web, face-api, the TensorFlow.js wasm
#     binaries) from mobile/package-lock.json.
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

# Every installed dependency must be the version package-lock.json pins (else reinstall).
stale=$(cd mobile && node -e '
  const lock = require("./package-lock.json").packages;
  const version = (name) => { try { return require(`./node_modules/${name}/package.json`).version; }
                              catch { return null; } };
  const stale = Object.keys(lock[""].dependencies)
    .filter((name) => version(name) !== lock[`node_modules/${name}`].version);
  process.stdout.write(stale.join(" "))')
if [ -n "$stale" ]; then
    echo "setup_browser: npm ci in mobile/ ($stale)"
    (cd mobile && npm ci --no-audit --no-fund --loglevel=error)
fi
