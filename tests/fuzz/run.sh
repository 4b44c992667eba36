#!/usr/bin/env bash
# Run every libFuzzer target of a fuzz build for SECONDS each.
#   tests/fuzz/run.sh BUILD_DIR [SECONDS]     (default 60)
# BUILD_DIR: configured with CC=clang -DATTND_FUZZ=ON (see README.md).
# Each target starts from its committed corpus (tests/fuzz/corpus/NAME,
# copied: the run's discoveries stay out of the repo) or, without one,
# from the seeds it writes itself (ATTND_FUZZ_SEEDS). A crash leaves its
# input as BUILD_DIR/fuzz-crashes/NAME-crash-* and fails the run: add it
# to the corpus (it then replays in every CTest run) and fix the bug.
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:?usage: tests/fuzz/run.sh BUILD_DIR [SECONDS]}
secs=${2:-60}
export UCX_MEM_MALLOC_HOOKS=no UCX_MEM_MMAP_HOOK_MODE=none
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
mkdir -p "$build/fuzz-crashes"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=0
n=0
while IFS= read -r bin; do
  name=$(basename "$bin")
  short=${name#fuzz_}
  mkdir -p "$work/$short"
  if [ -d "tests/fuzz/corpus/$short" ]; then
    cp "tests/fuzz/corpus/$short"/* "$work/$short"/
  fi
  echo "== $name: ${secs} s"
  if ! ATTND_FUZZ_SEEDS="$work/$short" "$bin" "$work/$short" -max_total_time="$secs" \
      -max_len=8192 -artifact_prefix="$build/fuzz-crashes/$short-" -print_final_stats=1 \
      > "$work/$short.log" 2>&1; then
    echo "$name: FAILED (inputs in $build/fuzz-crashes)"; tail -40 "$work/$short.log"
    failed=1
  else
    grep -E "^Done|number_of_executed_units" "$work/$short.log" | head -1
  fi
  n=$((n + 1))
done < <(find "$build" -type f -executable -name 'fuzz_*' \
           ! -name 'fuzz_replay_*' ! -name 'fuzz_make_seeds' | sort)
[ "$n" -gt 0 ] || { echo "no fuzz targets in $build (configure with -DATTND_FUZZ=ON)"; exit 1; }
exit $failed
