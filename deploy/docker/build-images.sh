#!/usr/bin/env bash
# Build the static binaries and the two images metacrypt-keyd and
# metacrypt-frontd from Containerfile.
#
# usage: build-images.sh [--engine docker|podman] [--tag TAG] [--skip-build]
#
#   --engine     container engine (default: podman if installed, else docker)
#   --tag TAG    image tag (default: the workspace version, such as 0.1.0)
#   --skip-build use the binaries already in
#                target/x86_64-unknown-linux-gnu/release
#
# The binaries are linked statically against glibc (crt-static), because the
# images are FROM scratch and contain no shared libraries. The build context
# is a temporary directory holding only the three binaries.
set -euo pipefail

program="build-images.sh"
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
target=x86_64-unknown-linux-gnu

die() {
    echo "$program: $*" >&2
    exit 1
}

usage() {
    echo "usage: $program [--engine docker|podman] [--tag TAG] [--skip-build]" >&2
    exit 2
}

engine=""
tag=""
build=yes
while [[ $# -gt 0 ]]; do
    case $1 in
    --engine)
        [[ $# -ge 2 ]] || usage
        engine=$2
        shift 2
        ;;
    --tag)
        [[ $# -ge 2 ]] || usage
        tag=$2
        shift 2
        ;;
    --skip-build)
        build=no
        shift
        ;;
    *)
        echo "$program: unknown argument \"$1\"" >&2
        usage
        ;;
    esac
done

if [[ -z "$engine" ]]; then
    if command -v podman >/dev/null 2>&1; then
        engine=podman
    elif command -v docker >/dev/null 2>&1; then
        engine=docker
    else
        die "neither podman nor docker is installed; pass --engine"
    fi
fi
command -v "$engine" >/dev/null 2>&1 || die "container engine \"$engine\" is not installed"

if [[ -z "$tag" ]]; then
    tag=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml")
    [[ -n "$tag" ]] || die "no version found in [workspace.package] of $repo/Cargo.toml; pass --tag"
fi

out="${CARGO_TARGET_DIR:-$repo/target}/$target/release"
if [[ "$build" == yes ]]; then
    (cd "$repo" && RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked \
        --target "$target" -p metacrypt-keyd -p metacrypt-frontd -p metacrypt-cli)
fi

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
for name in metacrypt-keyd metacrypt-frontd metacrypt; do
    [[ -x "$out/$name" ]] || die "$out/$name is missing; build without --skip-build"
    # A dynamically linked binary lists the shared libraries it needs as
    # NEEDED entries; a static one has none.
    if readelf -d "$out/$name" | grep -q '(NEEDED)'; then
        die "$out/$name is dynamically linked; build it with RUSTFLAGS=\"-C target-feature=+crt-static\""
    fi
    install -m 0755 "$out/$name" "$context/$name"
done

for image in keyd frontd; do
    "$engine" build -f "$here/Containerfile" --target "$image" \
        -t "metacrypt-$image:$tag" -t "metacrypt-$image:latest" "$context"
done
echo "$program: built metacrypt-keyd:$tag and metacrypt-frontd:$tag with $engine"
