#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test through ctest.
#   ./scripts/test.sh            gcc build, all tests; also checks the clang build is clean
set -euo pipefail
P11PSK_ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$P11PSK_ROOT/scripts/deps.sh"

p11psk_install_deps

echo "== clang build (warnings are errors)"
CC=clang p11psk_build "$P11PSK_ROOT/build-clang" -DP11PSK_TESTS=OFF

echo "== gcc build"
CC=gcc p11psk_build "$P11PSK_ROOT/build"

echo "== tests"
cd "$P11PSK_ROOT/build"
ctest --output-on-failure --timeout 600
