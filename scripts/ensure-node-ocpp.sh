#!/usr/bin/env bash
# The OCPP interoperability tests (tests/interop/) drive independent OCPP implementations
# from npm. Install them from the committed lock file into tests/interop/node_modules;
# quick when already installed. Without node/npm the tests skip and say why.
set -euo pipefail
dir="$(cd "$(dirname "$0")/../tests/interop" && pwd)"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "node/npm not found: the OCPP interoperability tests (tests/interop) will be skipped"
    exit 0
fi
stamp="$dir/node_modules/.evguard-installed"
if [ -f "$stamp" ] && [ "$stamp" -nt "$dir/package-lock.json" ]; then
    exit 0
fi
echo "installing the npm OCPP implementations for tests/interop (npm ci)"
(cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
touch "$stamp"
