#!/usr/bin/env bash
# Validates the STIX the sentinel sink writes for the hostile fixture feed with the OASIS
# validators. Usage: tests/stix/run.sh path/to/threatfox-sentinel
# Installs the pinned validators into a venv (VENV, default /tmp/venv-stix).
set -euo pipefail

binary=${1:?usage: tests/stix/run.sh path/to/threatfox-sentinel}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
venv=${VENV:-/tmp/venv-stix}
output=$(mktemp --suffix=.jsonl)
trap 'rm -f "$output"' EXIT

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"

# The fixture's dates are old: a long expiry keeps its IoCs from being skipped as expired.
# --dry-run never asks for a token, so no Azure login is needed.
env -u IDENTITY_ENDPOINT \
    IMPORT_SINK=sentinel \
    SENTINEL_WORKSPACE_ID=9b2a3c1e-3f5d-4a7b-8c9d-0e1f2a3b4c5d \
    INDICATOR_EXPIRATION_DAYS=3650 \
    STATE_DIR="$(mktemp -d)" \
    "$binary" import --input "$root/tests/fixtures/hostile-feed.json" --dry-run \
    --output "$output"

"$venv/bin/python" "$here/validate_stix.py" "$output"
