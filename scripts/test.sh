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
# TESTS=ON explicitly: demo.sh may have configured build/ without them.
CC=gcc p11psk_build "$P11PSK_ROOT/build" -DP11PSK_TESTS=ON

echo "== tests"
cd "$P11PSK_ROOT/build"
n=$(ctest -N | sed -n "s/^Total Tests: //p")
[ "${n:-0}" -gt 0 ] || { echo "no tests configured in build/" >&2; exit 1; }
ctest --output-on-failure --timeout 600
