#!/usr/bin/env bash
# Install every Debian package attnd needs to build, test and run.
# Idempotent; run as root (or with sudo available) on Debian 12 (the CUDA
# image runs it on Ubuntu 24.04, whose package names are the same).
# ATTND_DEPS=build installs only what a build needs (the images' build
# stage); the default adds what the tests use.
set -euo pipefail

PKGS=(
  build-essential cmake pkg-config git ca-certificates
  libgrpc-dev                         # gRPC C core (grpc.pc, version 29.x)
  libprotobuf-c-dev protobuf-c-compiler
  libucx-dev ucx-utils                # UCX and ucx_perftest
  liburing-dev
  libmicrohttpd-dev                   # the metrics endpoint (--metrics-listen)
  libssl-dev                          # libcrypto: TLS files checked, tenant tags
)
if [ "${ATTND_DEPS:-all}" != build ]; then
  PKGS+=(
    check                             # unit test framework
    python3 procps iproute2           # test scripts; iproute2: the namespace test
    python3-yaml yamllint python3-venv  # deploy/ lints (hadolint: install-lint-tools.sh)
    python3-prometheus-client         # the metrics test's parser
    openssl                           # the TLS tests make their certificates
    clang libclang-rt-dev             # libFuzzer targets (tests/fuzz, CI)
    python3-numpy python3-pytest      # the Python binding's tests (tests/python)
    python3-pip python3-setuptools python3-wheel  # its wheel (client/python/build-wheel.sh)
  )
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install-deps: run as root or install sudo" >&2; exit 1; }
  SUDO=sudo
fi

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PKGS[@]} packages present"
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
