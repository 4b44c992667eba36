#!/usr/bin/env bash
# Install attnd into a temporary prefix and use it as an outside project
# would: build the README's client example (client/examples) with
# `pkg-config --cflags --libs libattnd` and, separately, with CMake's
# find_package(attnd) against the static library; start the installed attnd
# on an ephemeral port; run both programs against it (each creates a
# session, prefills every layer, runs a decode step and checks that every
# head's LSE is finite); stop the server with SIGTERM and expect exit 0.
#   test_install.sh BUILD_DIR SOURCE_DIR     (CTest passes both)
# ATTND_SANITIZE (as the build's) is passed to the outside compiles.
set -euo pipefail
build=$1 src=$2
tmp=$(mktemp -d)
srv=
cleanup() {
  [ -n "$srv" ] && kill -KILL "$srv" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "test_install: $*" >&2; exit 1; }

cmake --install "$build" --prefix "$tmp/prefix" > "$tmp/install.log" || fail "cmake --install failed"
for f in bin/attnd bin/attnd-cli bin/attnd-bench include/attnd/client.h include/attnd/status.h \
         include/attnd/types.h lib/libattnd.a lib/pkgconfig/libattnd.pc \
         lib/cmake/attnd/attndConfig.cmake; do
  [ -e "$tmp/prefix/$f" ] || fail "$f was not installed"
done
ls "$tmp/prefix"/lib/libattnd.so* > /dev/null || fail "libattnd.so was not installed"

san=()
[ -n "${ATTND_SANITIZE:-}" ] && san=(-fsanitize="$ATTND_SANITIZE")

# 1. pkg-config, shared library
export PKG_CONFIG_PATH="$tmp/prefix/lib/pkgconfig"
# shellcheck disable=SC2046
cc -std=c11 -Wall -Wextra -Werror "${san[@]}" "$src/client/examples/attend_example.c" \
  -o "$tmp/example_pc" $(pkg-config --cflags --libs libattnd) -lm \
  -Wl,-rpath,"$(pkg-config --variable=libdir libattnd)" ||
  fail "the example does not build with pkg-config"

# 2. find_package(attnd), static library
mkdir -p "$tmp/cmake_consumer"
cat > "$tmp/cmake_consumer/CMakeLists.txt" <<CMK
cmake_minimum_required(VERSION 3.20)
project(consumer C)
find_package(attnd REQUIRED)
add_executable(example_cmake $src/client/examples/attend_example.c)
target_compile_options(example_cmake PRIVATE ${san[*]})
target_link_options(example_cmake PRIVATE ${san[*]})
target_link_libraries(example_cmake PRIVATE attnd::attnd_static)
CMK
cmake -S "$tmp/cmake_consumer" -B "$tmp/cmake_consumer/build" -DCMAKE_PREFIX_PATH="$tmp/prefix" \
  > "$tmp/consumer.log" 2>&1 || { cat "$tmp/consumer.log"; fail "find_package(attnd) failed"; }
cmake --build "$tmp/cmake_consumer/build" >> "$tmp/consumer.log" 2>&1 ||
  { cat "$tmp/consumer.log"; fail "the example does not build with find_package(attnd)"; }

# 3. run both against the installed server
"$tmp/prefix/bin/attnd" --model tiny-mla --listen 127.0.0.1:0 --port-file "$tmp/port" \
  --kv-memory 64Mi > "$tmp/attnd.log" 2>&1 &
srv=$!
for _ in $(seq 300); do
  [ -s "$tmp/port" ] && break
  kill -0 "$srv" 2>/dev/null || { cat "$tmp/attnd.log"; fail "attnd exited at start"; }
  sleep 0.1
done
[ -s "$tmp/port" ] || fail "attnd wrote no port file"
target=127.0.0.1:$(cat "$tmp/port")
"$tmp/example_pc" "$target" || fail "the pkg-config example failed against $target"
"$tmp/cmake_consumer/build/example_cmake" "$target" || fail "the CMake example failed"
"$tmp/prefix/bin/attnd-cli" --target "$target" health | grep -q SERVING ||
  fail "installed attnd-cli health did not say SERVING"
kill -TERM "$srv"
st=0
wait "$srv" || st=$?
srv=
[ "$st" -eq 0 ] || { cat "$tmp/attnd.log"; fail "attnd exited $st after SIGTERM"; }
echo "test_install: installed attnd, libattnd (shared via pkg-config, static via find_package) OK"
