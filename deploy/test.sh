#!/usr/bin/env bash
# The README's second command: install dependencies, build, run every test.
#   ./deploy/test.sh [extra cmake args]      (BUILD_DIR=build by default)
set -euo pipefail
cd "$(dirname "$0")/.."
./deploy/install-deps.sh
./deploy/install-lint-tools.sh > /dev/null   # hadolint, for test_deploy_lint (cached)
[ -d /usr/local/cuda/bin ] && export PATH="/usr/local/cuda/bin:$PATH"
BUILD_DIR=${BUILD_DIR:-build}
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@"
cmake --build "$BUILD_DIR" -j"$(nproc)"
ctest --test-dir "$BUILD_DIR" --output-on-failure -j"$(nproc)"
