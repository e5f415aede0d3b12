#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Lint stage of test.sh, over the files git tracks. Fails, naming every offending file, when
#   * a source, header, script or CMake file has no SPDX-License-Identifier line in its
#     first 3 lines (see spdx_line for which files need one);
#   * clang-format (.clang-format) would change a *.c or *.h file;
#   * shellcheck (default severity, following sourced files) reports anything on a shell
#     file under scripts/, tests/ or .ci/.
# lint.sh --fix-spdx adds the missing SPDX lines instead of checking anything.
# P11PSK_LINT=0 skips the checks (e.g. while C files still await the formatting pass).
set -euo pipefail
P11PSK_ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$P11PSK_ROOT"

SPDX_C='/* SPDX-License-Identifier: Apache-2.0 */'
SPDX_HASH='# SPDX-License-Identifier: Apache-2.0'

usage() {
    echo "usage: $0 [--fix-spdx]" >&2
    exit 2
}

has_shebang() { [ "$(head -c 2 "$1" | tr -d '\0')" = '#!' ]; }

# has_spdx FILE: an SPDX-License-Identifier line within the first 3 lines. (No `head | grep -q`:
# under pipefail, grep quitting early could fail the pipeline.)
has_spdx() {
    local top
    top=$(head -n 3 "$1" | tr -d '\0')
    [[ $top == *SPDX-License-Identifier:* ]]
}

# spdx_line FILE: prints the SPDX line FILE must carry, in its comment syntax, or nothing
# when FILE needs none. Excluded: the fuzzers' seed corpus (exact bytes are the point),
# man pages, markdown, conf samples, the linker map and other data or documentation (any
# other extension), and extensionless files that are not scripts (LICENSE).
spdx_line() {
    local base=${1##*/}
    case $1 in
    tests/fuzz/corpus/*) return 0 ;;
    esac
    case $base in
    *.c | *.h | *.c.in | *.h.in) echo "$SPDX_C" ;;
    *.sh | *.py | *.cmake | *.in | CMakeLists.txt) echo "$SPDX_HASH" ;;
    *.*) ;;
    *) if has_shebang "$1"; then echo "$SPDX_HASH"; fi ;;
    esac
}

# is_shell FILE: a shell script shellcheck must pass (*.sh, or a sh/bash shebang).
is_shell() {
    case $1 in
    tests/fuzz/corpus/*) return 1 ;;
    *.sh) return 0 ;;
    esac
    local first=
    IFS= read -r first <"$1" || true
    [[ $first =~ ^\#!.*[/\ ](ba)?sh(\ |$) ]]
}

# Tracked regular files (a file deleted but not yet committed is skipped).
tracked() {
    local f
    git ls-files -z | while IFS= read -r -d '' f; do
        if [ -f "$f" ] && [ ! -L "$f" ]; then printf '%s\0' "$f"; fi
    done
}

# fix_spdx FILE LINE: inserts LINE after a shebang (and a Python coding line after it), else
# as the first line. sed -i keeps the file's mode.
fix_spdx() {
    local f=$1 line=$2 after=0
    if has_shebang "$f"; then
        after=1
        if [[ $(sed -n 2p "$f") =~ ^\#.*coding[:=] ]]; then after=2; fi
    fi
    if [ ! -s "$f" ]; then
        printf '%s\n' "$line" >"$f"
    elif [ "$after" -eq 0 ]; then
        sed -i "1i\\$line" "$f"
    else
        sed -i "${after}a\\$line" "$f"
    fi
}

if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    echo "lint: $P11PSK_ROOT is not a git checkout (lint works on git ls-files);" \
        "set P11PSK_LINT=0 to skip it" >&2
    exit 1
fi

mapfile -d '' FILES < <(tracked)

case ${1:-} in
--fix-spdx)
    [ $# -eq 1 ] || usage
    fixed=0
    for f in "${FILES[@]}"; do
        line=$(spdx_line "$f")
        [ -n "$line" ] || continue
        has_spdx "$f" && continue
        fix_spdx "$f" "$line"
        echo "added SPDX line: $f"
        fixed=$((fixed + 1))
    done
    echo "lint: SPDX line added to $fixed file(s)"
    exit 0
    ;;
'') ;;
*) usage ;;
esac

if [ "${P11PSK_LINT:-1}" = 0 ]; then
    echo "lint: skipped (P11PSK_LINT=0)"
    exit 0
fi

for tool in clang-format shellcheck; do
    command -v "$tool" >/dev/null ||
        { echo "lint: $tool is not installed (scripts/deps.sh installs it)" >&2; exit 1; }
done

errors=0

echo "== lint: SPDX-License-Identifier in the first 3 lines"
for f in "${FILES[@]}"; do
    line=$(spdx_line "$f")
    [ -n "$line" ] || continue
    if ! has_spdx "$f"; then
        echo "lint: $f: no SPDX-License-Identifier line in its first 3 lines (want: $line)" >&2
        errors=$((errors + 1))
    fi
done

echo "== lint: clang-format"
C_FILES=()
for f in "${FILES[@]}"; do
    case $f in
    *.c | *.h) C_FILES+=("$f") ;;
    esac
done
if [ "${#C_FILES[@]}" -gt 0 ]; then
    rc=0
    out=$(clang-format --dry-run -Werror "${C_FILES[@]}" 2>&1) || rc=$?
    if [ "$rc" -ne 0 ]; then
        # One "FILE:LINE:COL: error: code should be clang-formatted" per place.
        n=0
        while read -r count f; do
            echo "lint: $f: clang-format would change $count place(s) (clang-format -i $f)" >&2
            n=$((n + 1))
        done < <(printf '%s\n' "$out" | sed -n 's/^\([^:]*\):[0-9]*:[0-9]*: error: .*/\1/p' |
            sort | uniq -c)
        if [ "$n" -eq 0 ]; then
            printf '%s\n' "$out" >&2
            echo "lint: clang-format exited $rc" >&2
            n=1
        fi
        errors=$((errors + n))
    fi
fi

echo "== lint: shellcheck"
SHELL_FILES=()
for f in "${FILES[@]}"; do
    case $f in
    scripts/* | tests/* | .ci/*) is_shell "$f" && SHELL_FILES+=("$f") ;;
    esac
done
if [ "${#SHELL_FILES[@]}" -gt 0 ]; then
    # -x -P SCRIPTDIR: follow `. "$(dirname "$0")/lib.sh"` so sourced helpers count as defined.
    rc=0
    out=$(shellcheck -x -P SCRIPTDIR -f gcc "${SHELL_FILES[@]}" 2>&1) || rc=$?
    if [ "$rc" -ne 0 ] || [ -n "$out" ]; then
        printf '%s\n' "$out" >&2
        mapfile -t bad < <(printf '%s\n' "$out" | sed -n 's/^\([^:]*\):[0-9]*:[0-9]*: .*/\1/p' | sort -u)
        for f in "${bad[@]}"; do
            echo "lint: $f: shellcheck findings (above)" >&2
        done
        # A run that failed without naming a file (a crash, a bad option) still fails lint.
        [ "${#bad[@]}" -gt 0 ] || echo "lint: shellcheck exited $rc" >&2
        errors=$((errors + (${#bad[@]} > 0 ? ${#bad[@]} : 1)))
    fi
fi

if [ "$errors" -gt 0 ]; then
    echo "lint: FAILED, $errors problem(s) (P11PSK_LINT=0 skips this stage)" >&2
    exit 1
fi
echo "lint: ok (${#FILES[@]} tracked files)"
