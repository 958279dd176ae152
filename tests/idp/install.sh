#!/usr/bin/env bash
# Install the test OpenID Connect provider's Node.js packages (tests/idp/node_modules)
# exactly as package-lock.json pins them, when they are missing or stale. Idempotent:
# does nothing when node_modules matches package.json and package-lock.json.
# Called by `make test` before pytest, and by tests/test_auth_oidc.py itself.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

command -v node >/dev/null || { echo "tests/idp: Node.js is required (node not found)" >&2; exit 1; }
command -v npm >/dev/null || { echo "tests/idp: npm is required (npm not found)" >&2; exit 1; }

stamp=node_modules/.aidc-installed
wanted="$(cat package.json package-lock.json | sha256sum | cut -d' ' -f1) node $(node --version)"

if [[ -f "$stamp" && "$(cat "$stamp")" == "$wanted" && -f node_modules/oidc-provider/package.json ]]; then
  exit 0
fi

npm ci --no-audit --no-fund --loglevel=error
echo "$wanted" > "$stamp"
