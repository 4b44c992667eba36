#!/bin/sh
# The Debian/Ubuntu packages that hold the shared libraries the given
# programs load (ldd, then dpkg -S on each library's real path), one a line,
# sorted. The images' build stage writes this list and their runtime stage
# installs exactly it, so the runtime image follows the build's libraries
# (libgrpc29 on Debian 12, libgrpc29t64 on Ubuntu 24.04, ...) without a
# hand-kept list. Libraries no package owns (libattnd beside the programs,
# CUDA's from the base image) are left out. tests/deploy/test_deploy_lint.py
# runs it on the build tree's attnd.
#   runtime-packages.sh PROGRAM...
set -eu
[ $# -ge 1 ] || { echo "usage: runtime-packages.sh PROGRAM..." >&2; exit 2; }
libs=$(for prog in "$@"; do
  ldd "$prog" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }'
done | sort -u)
# each library under its real path and, for merged /usr, without /usr;
# one dpkg -S for all (it reads dpkg's whole database per call)
paths=$(for lib in $libs; do
  real=$(readlink -f "$lib")
  echo "$real"
  echo "${real#/usr}"
done | sort -u)
# shellcheck disable=SC2086 # one path a word
dpkg -S $paths 2>/dev/null | cut -d: -f1 | sort -u
