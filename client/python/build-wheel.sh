#!/usr/bin/env bash
# Build a wheel of the attnd Python package with libattnd bundled inside, so
# that `pip install attnd-*.whl` needs no ATTND_LIB (the library's own
# dependencies, gRPC C core, protobuf-c and UCX, still come from the system:
# deploy/install-deps.sh on Debian 12).
#   client/python/build-wheel.sh [BUILD_DIR] [OUT_DIR]
# BUILD_DIR: the CMake build holding libattnd (default build); ATTND_LIB
# overrides the library's path. OUT_DIR: where the wheel goes (default
# BUILD_DIR/wheel). The wheel is tagged py3-none-linux_<arch>: pure Python
# plus a shared library for this platform, for any CPython 3.
# Needs pip, setuptools and wheel (Debian: python3-pip python3-setuptools
# python3-wheel); builds offline (no build isolation). PYTHON picks the interpreter.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${1:-$root/build}
out=${2:-$build/wheel}
lib=${ATTND_LIB:-}
if [ -z "$lib" ]; then
  for cand in "$build/client/lib/libattnd.so.0" "$build/client/libattnd.so.0"; do
    [ -e "$cand" ] && { lib=$cand; break; }
  done
fi
[ -n "$lib" ] && [ -e "$lib" ] || { echo "build-wheel: no libattnd.so.0 under $build (build it, or set ATTND_LIB)" >&2; exit 1; }
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cp "$here/pyproject.toml" "$here/README.md" "$stage/"
cp -r "$here/attnd" "$stage/attnd"
find "$stage/attnd" -name __pycache__ -prune -exec rm -rf {} +
cp -L "$lib" "$stage/attnd/libattnd.so.0"
printf '[bdist_wheel]\npython_tag = py3\nplat_name = linux_%s\n' "$(uname -m)" > "$stage/setup.cfg"
mkdir -p "$out"
"${PYTHON:-python3}" -m pip wheel --quiet --no-deps --no-build-isolation --no-index -w "$out" "$stage"
ls "$out"/attnd-*.whl
