#!/usr/bin/env bash
# Checks a package built by scripts/package.sh as the Functions host would use it: the zip has
# host.json, the function folders and an executable binary at its root, and that binary
# starts with the host's arguments and answers the readiness probe on `/`.
# Usage: scripts/check-package.sh [dist/threatfox-sentinel.zip]
set -euo pipefail

zip_path=$(realpath "${1:-dist/threatfox-sentinel.zip}")
work=$(mktemp -d)
pid=""
cleanup() {
    [[ -n $pid ]] && kill "$pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

python3 - "$zip_path" "$work" <<'PY'
import json, stat, sys, zipfile

zip_path, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(zip_path) as archive:
    names = set(archive.namelist())
    expected = {"host.json", "threatfox-sentinel", "ScheduledImport/function.json",
                "ImportNow/function.json"}
    missing = expected - names
    if missing:
        sys.exit(f"package is missing {sorted(missing)}")
    mode = archive.getinfo("threatfox-sentinel").external_attr >> 16
    if not mode & stat.S_IXUSR:
        sys.exit(f"threatfox-sentinel is not executable in the zip (mode {oct(mode)})")
    archive.extractall(dest)
for name in names:
    if name.endswith(".json"):
        json.load(open(f"{dest}/{name}"))
print(f"layout ok: {', '.join(sorted(names))}")
PY
chmod 755 "$work/threatfox-sentinel"

# Start it as the host does: the executable and arguments from host.json, a port in
# FUNCTIONS_CUSTOMHANDLER_PORT, the working directory at the app root.
read -r executable arguments < <(python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))["customHandler"]["description"]
print(d["defaultExecutablePath"], " ".join(d.get("arguments", [])))' "$work/host.json")
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
(
    cd "$work"
    # shellcheck disable=SC2086 # the host passes the arguments as separate words
    exec env -i PATH="$PATH" FUNCTIONS_CUSTOMHANDLER_PORT="$port" \
        THREATFOX_AUTH_KEY=package-check "./$executable" $arguments
) >"$work/handler.log" 2>&1 &
pid=$!

for _ in $(seq 1 100); do
    if answer=$(curl -fsS "http://127.0.0.1:$port/" 2>/dev/null); then
        echo "handler answered / with $answer"
        exit 0
    fi
    sleep 0.1
done
echo "the packaged handler did not answer / within 10 s; its log:" >&2
cat "$work/handler.log" >&2
exit 1
