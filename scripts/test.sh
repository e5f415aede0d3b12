#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Installs what is missing, lints, builds, and runs every test through ctest:
#   0. scripts/lint.sh: SPDX lines, clang-format, shellcheck;
#   1. clang build, warnings are errors;
#   2. gcc build: unit and integration tests;
#   3. gcc ASan+UBSan build: the same suites (valgrind and gcore tests skip themselves);
#   4. clang libFuzzer build: each fuzzer for P11PSK_FUZZ_SECONDS (default 30);
#   5. scripts/pkgtest.sh: Debian package built, linted, installed, used, purged (as root).
# P11PSK_QUICK=1 runs only steps 0 and 2. P11PSK_LINT=0 skips step 0.
set -euo pipefail
P11PSK_ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=deps.sh
. "$P11PSK_ROOT/scripts/deps.sh"

p11psk_install_deps
JOBS=${P11PSK_TEST_JOBS:-2}

# First: it is fast and needs no build.
echo "== lint"
"$P11PSK_ROOT/scripts/lint.sh"

run_ctest() { # DIR [ctest args]: fails if nothing is configured or anything fails
    local dir=$1 n
    shift
    n=$(ctest --test-dir "$dir" -N "$@" | sed -n "s/^Total Tests: //p")
    [ "${n:-0}" -gt 0 ] || { echo "no tests configured in $dir" >&2; exit 1; }
    ctest --test-dir "$dir" --output-on-failure --timeout 600 -j "$JOBS" "$@"
}

if [ -z "${P11PSK_QUICK:-}" ]; then
    echo "== clang build (warnings are errors)"
    CC=clang p11psk_build "$P11PSK_ROOT/build-clang" -DP11PSK_TESTS=OFF
fi

echo "== gcc build and tests"
# TESTS=ON explicitly: demo.sh may have configured build/ without them.
CC=gcc p11psk_build "$P11PSK_ROOT/build" -DP11PSK_TESTS=ON
run_ctest "$P11PSK_ROOT/build" -LE fuzz
[ -n "${P11PSK_QUICK:-}" ] && exit 0

echo "== ASan+UBSan build and tests"
CC=gcc p11psk_build "$P11PSK_ROOT/build-asan" -DP11PSK_TESTS=ON -DP11PSK_SANITIZE=ON
run_ctest "$P11PSK_ROOT/build-asan" -LE fuzz

echo "== fuzzers (clang, libFuzzer + ASan + UBSan, ${P11PSK_FUZZ_SECONDS:-30} s each)"
CC=clang p11psk_build "$P11PSK_ROOT/build-fuzz" -DP11PSK_TESTS=ON -DP11PSK_FUZZ=ON \
    -DP11PSK_FUZZ_SECONDS="${P11PSK_FUZZ_SECONDS:-30}"
ctest --test-dir "$P11PSK_ROOT/build-fuzz" -L fuzz --output-on-failure -V -j "$JOBS" |
    grep -E '^[0-9]+: p11psk-fuzz-|Test +#|tests passed|FAILED'

echo "== Debian package: build from a clean clone, lintian, install, demo, units, purge"
"$P11PSK_ROOT/scripts/pkgtest.sh"
