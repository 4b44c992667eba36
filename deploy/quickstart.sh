#!/usr/bin/env bash
# The README's first command: install dependencies, build, then run the main
# job on the embedded default: attnd-bench starts a local attnd (one worker on
# loopback, CPU kernels), prefills sessions over AppendKV, drives a decode
# loop of per-layer Attend calls, and checks every output against a float64
# reference computed in the client.
#   ./deploy/quickstart.sh [attnd-bench flags]   (default: --model llama3-8b --check)
# BUILD_DIR=build by default; ATTND_CUDA=OFF skips the CUDA kernels.
set -euo pipefail
cd "$(dirname "$0")/.."
./deploy/install-deps.sh
[ -d /usr/local/cuda/bin ] && export PATH="/usr/local/cuda/bin:$PATH"
BUILD_DIR=${BUILD_DIR:-build}
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DATTND_CUDA="${ATTND_CUDA:-ON}" >/dev/null
cmake --build "$BUILD_DIR" -j"$(nproc)" --target attnd attnd-bench attnd-cli
if [ $# -eq 0 ]; then
  set -- --model llama3-8b --check
fi
exec "$BUILD_DIR/client/bench/attnd-bench" "$@"
