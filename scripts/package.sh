#!/usr/bin/env bash
# Builds the threatfox-sentinel handler for Linux x86-64 and packs it, with host.json and the
# function folders, into dist/threatfox-sentinel.zip for a Flex Consumption deployment.
#
# Usage: scripts/package.sh [--native] [--skip-build]
#
#   (no option)   Build with `cargo zigbuild --release --target x86_64-unknown-linux-gnu.2.28`
#                 so the binary only needs glibc 2.28, whatever the build machine has.
#                 Needs cargo-zigbuild and zig: `pip install cargo-zigbuild ziglang`.
#   --native      Build with plain `cargo build --release` on an x86-64 Linux machine. The
#                 binary then needs the build machine's glibc; the script prints that version.
#   --skip-build  Build nothing: package the binary at $BINARY as it is.
#   -h, --help    Show this text.
#
# Environment:
#   BINARY            path of the binary to package (required with --skip-build)
#   DIST_DIR          output folder (default: dist at the repository root)
#   CARGO_TARGET_DIR  honoured when looking for cargo's output
#
# Output: DIST_DIR/package/ (the app root as deployed) and DIST_DIR/threatfox-sentinel.zip.
set -euo pipefail

readonly APP_NAME="threatfox-sentinel"
readonly RUST_TARGET="x86_64-unknown-linux-gnu"
# glibc 2.28 (Debian 10, RHEL 8) is older than any image Azure Functions runs on Linux.
readonly GLIBC_BASELINE="2.28"
readonly FUNCTION_FOLDERS=(ScheduledImport ImportNow)

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dist_dir="${DIST_DIR:-$repo_root/dist}"
target_dir="${CARGO_TARGET_DIR:-$repo_root/target}"
stage_dir="$dist_dir/package"
zip_path="$dist_dir/$APP_NAME.zip"

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}

die() {
    echo "package.sh: error: $*" >&2
    exit 1
}

warn() {
    echo "package.sh: warning: $*" >&2
}

# Prints the highest GLIBC_x.y symbol version the binary links against, or "unknown".
glibc_requirement() {
    local binary="$1" symbols=""
    if command -v objdump >/dev/null 2>&1; then
        symbols="$(objdump -T "$binary" 2>/dev/null || true)"
    elif command -v readelf >/dev/null 2>&1; then
        symbols="$(readelf --dyn-syms --wide "$binary" 2>/dev/null || true)"
    fi
    local newest
    newest="$(grep -o 'GLIBC_[0-9][0-9.]*' <<<"$symbols" | sed 's/^GLIBC_//' \
        | sort -t. -k1,1n -k2,2n -k3,3n | tail -n 1 || true)"
    echo "${newest:-unknown}"
}

build_with_zig() {
    command -v cargo-zigbuild >/dev/null 2>&1 \
        || die "cargo-zigbuild not found: install it with 'pip install cargo-zigbuild ziglang'" \
            "or build for this machine's glibc with --native"
    echo "building $APP_NAME for $RUST_TARGET against glibc $GLIBC_BASELINE (cargo zigbuild)"
    (cd "$repo_root" && cargo zigbuild --release --target "$RUST_TARGET.$GLIBC_BASELINE")
    # cargo-zigbuild drops the glibc suffix from the output folder name.
    binary="$target_dir/$RUST_TARGET/release/$APP_NAME"
}

build_native() {
    [[ "$(uname -s)/$(uname -m)" == "Linux/x86_64" ]] \
        || die "--native builds for this machine, which is not x86-64 Linux; drop --native"
    echo "building $APP_NAME for this machine (cargo build --release)"
    (cd "$repo_root" && cargo build --release)
    binary="$target_dir/release/$APP_NAME"
}

# True when version $1 is newer than version $2 (both dotted numbers).
version_newer() {
    local newest
    newest="$(printf '%s\n%s\n' "$1" "$2" | sort -t. -k1,1n -k2,2n -k3,3n | tail -n 1)"
    [[ "$1" != "$2" && "$newest" == "$1" ]]
}

# Writes the zip with Unix permissions recorded, so the handler keeps its exec bit.
write_zip() {
    python3 - "$stage_dir" "$zip_path" <<'PY'
import os
import stat
import sys
import zipfile

stage, archive = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
    for root, dirs, files in os.walk(stage):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            info = zipfile.ZipInfo.from_file(path, os.path.relpath(path, stage))
            info.create_system = 3  # Unix, so readers honour the mode bits below
            info.external_attr = (stat.S_IFREG | stat.S_IMODE(os.stat(path).st_mode)) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            with open(path, "rb") as source:
                zf.writestr(info, source.read())
PY
}

list_zip() {
    python3 - "$zip_path" <<'PY'
import stat
import sys
import zipfile

with zipfile.ZipFile(sys.argv[1]) as zf:
    for info in zf.infolist():
        mode = stat.filemode(info.external_attr >> 16)
        print(f"  {mode}  {info.file_size:>10}  {info.filename}")
PY
}

mode="zig"
skip_build=false
while (($#)); do
    case "$1" in
        --native) mode="native" ;;
        --skip-build) skip_build=true ;;
        -h | --help)
            usage
            exit 0
            ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
    shift
done

command -v python3 >/dev/null 2>&1 || die "python3 is needed to write the zip"

binary=""
if $skip_build; then
    [[ -n "${BINARY:-}" ]] || die "--skip-build needs BINARY set to the binary to package"
    binary="$BINARY"
elif [[ "$mode" == "native" ]]; then
    build_native
else
    build_with_zig
fi
[[ -f "$binary" ]] || die "no binary at $binary"

glibc="$(glibc_requirement "$binary")"
if [[ "$glibc" == unknown ]]; then
    warn "could not read the glibc requirement of $binary (no objdump/readelf, or not ELF)"
elif [[ "$mode" == "native" && "$skip_build" == false ]]; then
    warn "native build: the binary needs glibc $glibc or newer on the Functions host" \
        "(the default zigbuild path targets glibc $GLIBC_BASELINE)"
elif version_newer "$glibc" "$GLIBC_BASELINE"; then
    warn "the binary needs glibc $glibc, newer than the $GLIBC_BASELINE baseline"
else
    echo "binary needs glibc $glibc or newer"
fi

for item in host.json "${FUNCTION_FOLDERS[@]}"; do
    [[ -e "$repo_root/$item" ]] || die "$item is missing from the repository root"
done

rm -rf "$stage_dir" "$zip_path"
mkdir -p "$stage_dir"
cp "$repo_root/host.json" "$stage_dir/"
for folder in "${FUNCTION_FOLDERS[@]}"; do
    cp -R "$repo_root/$folder" "$stage_dir/"
done
install -m 755 "$binary" "$stage_dir/$APP_NAME"

write_zip
echo "wrote $zip_path"
list_zip
