#!/usr/bin/env bash
# Runs every check the project has, installing what they need first:
#   - the Rust tests (unit, end-to-end against local fakes, and the blob checkpoint against
#     Azurite, the storage emulator, which the tests start themselves),
#   - the STIX the sentinel sink writes, through the OASIS validators,
#   - the deployment checks (Bicep syntax and roles, host.json and function.json, packaging).
# Usage: scripts/test.sh    (from anywhere; needs cargo, cargo-nextest, python3, node/npm
#                           and openssl)
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in python3 npm openssl cargo-nextest; do
  command -v "$tool" >/dev/null 2>&1 \
    || { echo "scripts/test.sh needs $tool on PATH" >&2; exit 1; }
done

venv="${VENV_DIR:-${TMPDIR:-/tmp}/threatfox-sentinel-venv}"
if [[ ! -x "$venv/bin/pytest" ]]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r infra/tests/requirements.txt

echo "== npm ci (Azurite for the blob checkpoint tests)"
npm ci --no-audit --no-fund --loglevel=error

echo "== cargo nextest run"
cargo nextest run --locked --no-fail-fast

echo "== STIX validation of the sentinel sink's output"
VENV="$venv" bash tests/stix/run.sh "${CARGO_TARGET_DIR:-target}/debug/threatfox-sentinel"

echo "== deployment checks"
"$venv/bin/pytest" -q -p no:cacheprovider infra/tests
