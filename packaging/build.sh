#!/usr/bin/env bash
# Builds Lamplighter's .deb and .rpm for each architecture asked for:
#
#   packaging/build.sh [-o DIR] [-b BINARY] [-v VERSION] [ARCH...]
#
# ARCH is a Go architecture (default: amd64 arm64); the packages go to DIR
# (default dist/). The binary is built from this tree (static, trimmed,
# its version and commit stamped in) unless -b gives one (the upgrade test
# packages an earlier release's binary so). nfpm runs as a Go tool of
# packaging/go.mod, so that its dependencies never touch the server's.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
top="$(cd "$here/.." && pwd)"
out="$top/dist"
binary=""
version="$(cat "$here/VERSION")"
while getopts "o:b:v:" opt; do
  case "$opt" in
    o) out="$(mkdir -p "$OPTARG" && cd "$OPTARG" && pwd)" ;;
    b) binary="$(cd "$(dirname "$OPTARG")" && pwd)/$(basename "$OPTARG")" ;;
    v) version="$OPTARG" ;;
    *) exit 2 ;;
  esac
done
shift $((OPTIND - 1))
arches=("$@")
[ ${#arches[@]} -gt 0 ] || arches=(amd64 arm64)
commit="$(git -C "$top" rev-parse HEAD 2>/dev/null || true)"
pkg=github.com/lamplighter/lamplighter/cmd/lamplighter/version
mkdir -p "$out"
for arch in "${arches[@]}"; do
  build="$out/build-$arch"
  rm -rf "$build"
  mkdir -p "$build"
  if [ -n "$binary" ]; then
    cp "$binary" "$build/lamplighter"
  else
    (cd "$top" && CGO_ENABLED=0 GOOS=linux GOARCH="$arch" go build -trimpath \
      -ldflags "-s -w -X $pkg.stamped=$version -X $pkg.stampedCommit=$commit" \
      -o "$build/lamplighter" ./cmd/lamplighter)
  fi
  # The unit as the package installs it: the binary in /usr/bin.
  sed 's|/usr/local/bin/lamplighter|/usr/bin/lamplighter|g' "$top/systemd/lamplighter.service" > "$build/lamplighter.service"
  sed "s|@VERSION@|$version|g" "$here/lamplighter.8" | gzip -9n > "$build/lamplighter.8.gz"
  for packager in deb rpm; do
    (cd "$here" && VERSION="$version" PKG_ARCH="$arch" BUILD="$build" \
      go tool nfpm package --config nfpm.yaml --packager "$packager" --target "$out/")
  done
  rm -rf "$build"
done
ls -1 "$out"/*.deb "$out"/*.rpm
